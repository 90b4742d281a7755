//! The `tandem` binary: command line, logging and signals. `anyhow` lives only here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tandem::config::Config;

/// Tandem: a MySQL-protocol sidecar proxy.
///
/// Applications connect to Tandem's listeners with an ordinary MySQL driver; Tandem forwards
/// their sessions to the configured data sources.
#[derive(Parser, Debug)]
#[command(name = "tandem", version, about, long_about = None)]
struct Cli {
    /// Configuration file (YAML). Runs the sidecar when no subcommand is given.
    #[arg(short, long, global = true, env = "TANDEM_CONFIG")]
    config: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Log filter, in tracing's env-filter syntax (for example `info` or `tandem=debug`).
    /// RUST_LOG overrides it.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar (the default).
    Start,
    /// Validate the configuration and exit: 0 when valid, 1 with the bad field named otherwise.
    Check,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .config
        .clone()
        .context("no configuration file: pass --config FILE")?;
    let config = Config::load(&path)?;
    match cli.command {
        Some(Command::Check) => {
            println!(
                "{}: valid ({} listener(s), {} executor(s), {} data source(s))",
                path.display(),
                config.listeners.len(),
                config.executors.len(),
                config.data_sources.len()
            );
            Ok(())
        }
        Some(Command::Start) | None => {
            init_logging(cli.log_format, &cli.log_level);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(tandem::server::run(config, shutdown_signal()))?;
            // Sessions still running after the drain are dropped with the runtime.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
