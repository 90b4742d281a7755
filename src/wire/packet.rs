//! Packet framing: a 3-byte little-endian length, a sequence id, then the payload.
//!
//! A payload of 2^24-1 bytes or more is split into chunks of exactly 0xFF_FFFF bytes followed
//! by a shorter one (possibly empty); [`PacketIo::read_packet`] joins them, and
//! [`PacketIo::write_packet`] splits them again, so re-framing a forwarded payload with the same
//! starting sequence id reproduces the original bytes.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload one physical packet can carry.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// How much to ask the socket for at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Write buffers are flushed once they hold this much.
const WRITE_HIGH_WATER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a packet")]
    Truncated,
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("packet out of order: expected sequence id {expected}, got {got}")]
    OutOfOrder { expected: u8, got: u8 },
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// One logical packet: its payload and the sequence id of its first chunk.
#[derive(Debug, Clone)]
pub struct Packet {
    pub seq: u8,
    /// Sequence id of the last chunk; the peer's next packet uses `last_seq + 1`.
    pub last_seq: u8,
    pub payload: Bytes,
}

/// A buffered packet stream over any async byte stream.
pub struct PacketIo<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl<S> PacketIo<S> {
    pub fn new(stream: S) -> Self {
        PacketIo {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Bytes read from the socket but not yet consumed.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Takes the stream back, with any bytes already read but not consumed.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// Rebuilds a packet stream, keeping bytes that were read ahead (for a TLS upgrade there are
    /// none, which the caller checks).
    pub fn from_parts(stream: S, rbuf: BytesMut) -> Self {
        PacketIo {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(READ_CHUNK),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PacketIo<S> {
    /// Reads more bytes into the read buffer. Returns 0 at end of stream.
    pub async fn fill(&mut self) -> Result<usize, std::io::Error> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Reads one logical packet. `Ok(None)` means the peer closed the connection cleanly,
    /// between packets; a close inside a packet is [`WireError::Truncated`].
    ///
    /// `limit` bounds the joined payload; a larger packet is reported as soon as its header
    /// says so, without reading it, so a client cannot make Tandem buffer without bound.
    pub async fn read_packet(&mut self, limit: usize) -> Result<Option<Packet>, WireError> {
        let mut first_seq = None;
        let mut joined: Option<BytesMut> = None;
        loop {
            while self.rbuf.len() < 4 {
                if self.fill().await? == 0 {
                    return if self.rbuf.is_empty() && first_seq.is_none() {
                        Ok(None)
                    } else {
                        Err(WireError::Truncated)
                    };
                }
            }
            let len = u32::from_le_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], 0]) as usize;
            let seq = self.rbuf[3];
            if let Some(prev) = first_seq.map(|(_, last): (u8, u8)| last) {
                let expected = prev.wrapping_add(1);
                if seq != expected {
                    return Err(WireError::OutOfOrder { expected, got: seq });
                }
            }
            let total = joined.as_ref().map_or(0, |j| j.len()) + len;
            if total > limit {
                return Err(WireError::TooLarge { size: total, limit });
            }
            while self.rbuf.len() < 4 + len {
                self.rbuf.reserve(4 + len - self.rbuf.len());
                if self.fill().await? == 0 {
                    return Err(WireError::Truncated);
                }
            }
            self.rbuf.advance(4);
            let chunk = self.rbuf.split_to(len);
            first_seq = Some((first_seq.map_or(seq, |(f, _)| f), seq));
            if len < MAX_CHUNK && joined.is_none() {
                return Ok(Some(Packet {
                    seq,
                    last_seq: seq,
                    payload: chunk.freeze(),
                }));
            }
            let buf = joined.get_or_insert_with(BytesMut::new);
            buf.extend_from_slice(&chunk);
            if len < MAX_CHUNK {
                let (first, last) = first_seq.unwrap_or((seq, seq));
                let payload = joined.take().unwrap_or_default().freeze();
                return Ok(Some(Packet {
                    seq: first,
                    last_seq: last,
                    payload,
                }));
            }
        }
    }

    /// Buffers one logical packet, splitting it into chunks as needed. Returns the sequence id
    /// the next packet should carry.
    pub fn write_packet(&mut self, mut seq: u8, payload: &[u8]) -> u8 {
        let mut rest = payload;
        loop {
            let n = rest.len().min(MAX_CHUNK);
            let len = (n as u32).to_le_bytes();
            self.wbuf.extend_from_slice(&[len[0], len[1], len[2], seq]);
            self.wbuf.extend_from_slice(&rest[..n]);
            seq = seq.wrapping_add(1);
            rest = &rest[n..];
            if n < MAX_CHUNK {
                return seq;
            }
        }
    }

    /// Buffers bytes that are already framed.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// True when the write buffer should be flushed before buffering more.
    pub fn should_flush(&self) -> bool {
        self.wbuf.len() >= WRITE_HIGH_WATER
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> Result<(), std::io::Error> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }

    /// Writes already-framed bytes straight to the stream, after anything buffered.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), std::io::Error> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.write_all(bytes).await
    }

    pub async fn shutdown(&mut self) -> Result<(), std::io::Error> {
        self.flush().await?;
        self.stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(payload: Vec<u8>) -> Packet {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = PacketIo::new(a);
        let mut r = PacketIo::new(b);
        let p = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_packet(0, &p);
            w.flush().await.unwrap();
            w
        });
        let got = r.read_packet(64 << 20).await.unwrap().unwrap();
        drop(writer.await.unwrap());
        got
    }

    #[tokio::test]
    async fn small_packet_round_trips() {
        let got = roundtrip(b"\x03select 1".to_vec()).await;
        assert_eq!(got.seq, 0);
        assert_eq!(&got.payload[..], b"\x03select 1");
    }

    #[tokio::test]
    async fn large_packet_is_split_and_joined() {
        let payload: Vec<u8> = (0..MAX_CHUNK + 10).map(|i| i as u8).collect();
        let got = roundtrip(payload.clone()).await;
        assert_eq!(got.payload.len(), payload.len());
        assert_eq!(got.last_seq, 1);
        assert!(got.payload[..] == payload[..]);
    }

    #[tokio::test]
    async fn exact_chunk_size_needs_empty_trailer() {
        let payload = vec![7u8; MAX_CHUNK];
        let got = roundtrip(payload).await;
        assert_eq!(got.payload.len(), MAX_CHUNK);
        assert_eq!(got.last_seq, 1);
    }

    #[tokio::test]
    async fn oversized_packet_is_refused_from_its_header() {
        let (a, b) = tokio::io::duplex(1024);
        let mut r = PacketIo::new(b);
        let mut a = a;
        a.write_all(&[0xff, 0xff, 0x00, 0]).await.unwrap();
        match r.read_packet(1000).await {
            Err(WireError::TooLarge { size, limit }) => {
                assert_eq!(size, 0xffff);
                assert_eq!(limit, 1000);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_packet_is_an_error_and_clean_close_is_none() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut r = PacketIo::new(b);
        a.write_all(&[10, 0, 0, 0, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            r.read_packet(1 << 20).await,
            Err(WireError::Truncated)
        ));

        let (a, b) = tokio::io::duplex(1024);
        let mut r = PacketIo::new(b);
        drop(a);
        assert!(r.read_packet(1 << 20).await.unwrap().is_none());
    }
}
