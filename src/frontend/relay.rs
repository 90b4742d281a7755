//! Streams a backend response to the client as it arrives.
//!
//! Bytes are forwarded in whole socket reads, untouched; the scanner only watches packet
//! boundaries to know where the response ends. Memory use is one read buffer, however large
//! the result.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::backend::BackendConn;
use crate::wire::scanner::{Progress, ResponseKind, ResponseScanner, Summary};
use crate::wire::{PacketIo, WireError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The backend failed or sent something unreadable. `forwarded` tells whether part of the
    /// response already reached the client (then an error packet can no longer be sent).
    #[error("backend failed: {reason}")]
    Backend { reason: String, forwarded: bool },
    /// The client went away or stopped reading.
    #[error("client connection failed: {0}")]
    Client(WireError),
}

/// Relays one response. On any error the backend connection must be considered broken.
pub async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut BackendConn,
    client: &mut PacketIo<C>,
    kind: ResponseKind,
    max_packet: usize,
) -> Result<Summary, RelayError> {
    let mut scanner = ResponseScanner::new(kind, backend.deprecate_eof());
    let mut forwarded = false;
    loop {
        let io = backend.io();
        if io.read_buffer().is_empty() {
            match io.fill().await {
                Ok(0) => {
                    return Err(RelayError::Backend {
                        reason: "connection closed".into(),
                        forwarded,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(RelayError::Backend {
                        reason: e.to_string(),
                        forwarded,
                    })
                }
            }
        }
        let buf = io.read_buffer();
        let progress = scanner.feed(buf).map_err(|e| RelayError::Backend {
            reason: e.to_string(),
            forwarded,
        })?;
        let n = match progress {
            Progress::NeedMore => buf.len(),
            Progress::Done(n) | Progress::LocalInfile(n) => n,
        };
        client
            .send_raw(&buf[..n])
            .await
            .map_err(|e| RelayError::Client(e.into()))?;
        bytes::Buf::advance(buf, n);
        forwarded = true;
        match progress {
            Progress::NeedMore => {}
            Progress::Done(_) => {
                client
                    .flush()
                    .await
                    .map_err(|e| RelayError::Client(e.into()))?;
                return Ok(scanner.into_summary());
            }
            Progress::LocalInfile(_) => {
                client
                    .flush()
                    .await
                    .map_err(|e| RelayError::Client(e.into()))?;
                relay_infile(backend, client, max_packet).await?;
                scanner.resume_after_infile();
            }
        }
    }
}

/// LOAD DATA LOCAL INFILE: the client sends the file as packets ended by an empty one.
async fn relay_infile<C: AsyncRead + AsyncWrite + Unpin>(
    backend: &mut BackendConn,
    client: &mut PacketIo<C>,
    max_packet: usize,
) -> Result<(), RelayError> {
    let backend_err = |e: std::io::Error| RelayError::Backend {
        reason: e.to_string(),
        forwarded: true,
    };
    loop {
        let p = client
            .read_packet(max_packet)
            .await
            .map_err(RelayError::Client)?
            .ok_or(RelayError::Client(WireError::Truncated))?;
        let io = backend.io();
        io.write_packet(p.seq, &p.payload);
        if p.payload.is_empty() {
            return io.flush().await.map_err(backend_err);
        }
        if io.should_flush() {
            io.flush().await.map_err(backend_err)?;
        }
    }
}
