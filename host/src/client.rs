//! The client side: `pier send`, one frame out and one reply back over the chosen framing.
//!
//! Errors are typed so the CLI can print one precise line (refused, timed out, closed early)
//! and tests can assert on the kind.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::framing::{FrameError, Framing};

/// Why `pier send` got no reply.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// Nothing listens at the address.
    #[error("connection refused by {0}")]
    Refused(String),
    /// Connecting failed for another reason.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// No reply within the timeout.
    #[error("no reply from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The server closed the connection first.
    #[error("{0} closed the connection without replying")]
    Closed(String),
    /// The reply broke the framing.
    #[error("bad reply from {addr}: {source}")]
    BadReply {
        /// The address.
        addr: String,
        /// What was wrong.
        source: FrameError,
    },
    /// Reading or writing failed.
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
}

/// Sends `message` as one frame to `addr` and returns the first reply frame.
pub async fn send_one(
    addr: &str,
    framing: Framing,
    message: &[u8],
    timeout: Duration,
    max_frame: usize,
) -> Result<Bytes, SendFailure> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::ConnectionRefused {
                SendFailure::Refused(addr.to_string())
            } else {
                SendFailure::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
        })?;
        stream.set_nodelay(true).ok();
        let mut out = BytesMut::new();
        framing
            .encode(message, &mut out)
            .map_err(|source| SendFailure::BadReply {
                addr: addr.to_string(),
                source,
            })?;
        let io_err = |source| SendFailure::Io {
            addr: addr.to_string(),
            source,
        };
        stream.write_all(&out).await.map_err(io_err)?;
        read_reply(&mut stream, addr, framing, max_frame).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SendFailure::Timeout {
            addr: addr.to_string(),
            timeout,
        })?
}

/// Reads one frame; for raw framing that is whatever the first read returns.
async fn read_reply(
    stream: &mut TcpStream,
    addr: &str,
    framing: Framing,
    max_frame: usize,
) -> Result<Bytes, SendFailure> {
    let mut decoder = framing.decoder(max_frame);
    let mut buf = BytesMut::with_capacity(decoder.read_hint());
    loop {
        buf.reserve(decoder.read_hint());
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|source| SendFailure::Io {
                addr: addr.to_string(),
                source,
            })?;
        let bad = |source| SendFailure::BadReply {
            addr: addr.to_string(),
            source,
        };
        if n == 0 {
            return match decoder.decode_eof(&mut buf).map_err(bad)? {
                Some(frame) => Ok(frame),
                None => Err(SendFailure::Closed(addr.to_string())),
            };
        }
        if let Some(frame) = decoder.decode(&mut buf).map_err(bad)? {
            return Ok(frame);
        }
    }
}
