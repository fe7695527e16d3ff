//! A connection's byte stream — plain TCP or TLS over TCP — with the reads the connection task
//! needs: wait-then-read into the worker's scratch buffer (so idle connections hold no read
//! buffer), a non-blocking read for shutdown draining, and writes.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How much one read takes at most (each worker reads into one shared scratch buffer).
pub const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// The worker's read scratch: sockets are read here and only the bytes that arrived are
    /// copied into the connection, so a connection holds no read buffer while idle (and a
    /// partial frame costs its own size, not a whole read chunk).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// A client connection's stream.
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, after a completed handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Waits until bytes arrive and appends up to `limit` of them to `buf`; `Ok(0)` at end of
    /// stream. Cancel-safe: nothing is lost if the future is dropped before it completes.
    pub async fn read_some(&mut self, buf: &mut BytesMut, limit: usize) -> io::Result<usize> {
        let limit = limit.clamp(1, READ_CHUNK);
        // Through `AsyncRead` rather than `readable` + `try_read`: tokio's `poll_read` treats a
        // read shorter than the buffer as proof the socket is drained and waits for epoll next
        // time, where `try_read` keeps the readiness and pays a second, empty `recv` per frame.
        match self {
            Transport::Plain(stream) => poll_fn(|cx| poll_read_into(stream, cx, buf, limit)).await,
            Transport::Tls(stream) => {
                poll_fn(|cx| poll_read_into(stream.as_mut(), cx, buf, limit)).await
            }
        }
    }

    /// Appends what has already arrived without waiting; `Ok(None)` if nothing has.
    pub fn read_now(&mut self, buf: &mut BytesMut, limit: usize) -> io::Result<Option<usize>> {
        let limit = limit.clamp(1, READ_CHUNK);
        match self {
            Transport::Plain(stream) => try_read_plain(stream, buf, limit),
            Transport::Tls(stream) => {
                let mut cx = Context::from_waker(Waker::noop());
                match poll_read_into(stream.as_mut(), &mut cx, buf, limit) {
                    Poll::Ready(result) => result.map(Some),
                    Poll::Pending => Ok(None),
                }
            }
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.write_all(data).await,
            Transport::Tls(stream) => {
                stream.write_all(data).await?;
                stream.flush().await
            }
        }
    }

    /// Ends the sending side (a FIN, after TLS close_notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.shutdown().await,
            Transport::Tls(stream) => stream.shutdown().await,
        }
    }
}

fn try_read_plain(
    stream: &TcpStream,
    buf: &mut BytesMut,
    limit: usize,
) -> io::Result<Option<usize>> {
    SCRATCH.with_borrow_mut(|scratch| match stream.try_read(&mut scratch[..limit]) {
        Ok(n) => {
            buf.extend_from_slice(&scratch[..n]);
            Ok(Some(n))
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(err) => Err(err),
    })
}

/// One read of at most `limit` bytes into the scratch buffer, appended to `buf`.
fn poll_read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    limit: usize,
) -> Poll<io::Result<usize>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut read = ReadBuf::new(&mut scratch[..limit]);
        match Pin::new(stream).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
}
