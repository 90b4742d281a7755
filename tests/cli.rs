//! The command line: `--help`, `check`, and start-up errors that name the field.

mod common;

use std::process::Command;

fn tandem(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_every_flag() {
    let (ok, out, _) = tandem(&["--help"]);
    assert!(ok);
    for flag in [
        "--config",
        "--log-format",
        "--log-level",
        "check",
        "start",
        "--version",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

#[test]
fn check_accepts_the_examples_and_names_bad_fields() {
    let example = common::root().join("config/single.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(&example)
        .env("APP_DB_PASSWORD", "x")
        .env("ORDERS_DB_PASSWORD", "y")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    let dir = common::scratch("cli");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("mode: single", "mode: triple");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(&bad)
        .env("APP_DB_PASSWORD", "x")
        .env("ORDERS_DB_PASSWORD", "y")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("executors[0].mode"), "{err}");
    assert!(err.contains("unknown variant `triple`"), "{err}");

    // A missing environment variable names the field that uses it.
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["check", "--config"])
        .arg(&example)
        .env_remove("APP_DB_PASSWORD")
        .env("ORDERS_DB_PASSWORD", "y")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listeners[0].users.app") && err.contains("APP_DB_PASSWORD"),
        "{err}"
    );

    let (ok, _, err) = tandem(&["check"]);
    assert!(!ok);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn start_fails_clearly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = common::scratch("cli-port");
    let yaml = common::single_config(
        "mysql://root@127.0.0.1:1/x",
        "",
        "{ max: 1, connect_timeout: 100ms }",
    )
    .replace("{PORT}", &port.to_string())
    .replace("{ADMIN}", &common::free_port().to_string())
    .replace("{DIR}", &dir.display().to_string());
    let path = dir.join("t.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (ok, _, err) = tandem(&["--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("listeners[0].address") && err.contains("cannot listen"),
        "{err}"
    );
}
