//! A TCP socket that can move between tokio runtimes: attached (registered with the reactor of
//! the runtime that uses it) while a request runs, detached (a plain non-blocking std socket,
//! registered nowhere) while it sits in the pool.
//!
//! Why: each pier worker is its own runtime, and a pooled connection must be usable by any
//! worker. Registering on checkout and deregistering on return costs two `epoll_ctl` calls;
//! the alternative — doing every upstream exchange on one shared runtime thread — costs two
//! cross-thread wake-ups per request, which measured about three times the CPU per proxied
//! round trip (BENCHMARKS.md "Proxy").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// See the module doc.
#[derive(Debug)]
pub enum Socket {
    /// Registered with the current runtime's reactor: usable.
    Attached(TcpStream),
    /// Registered nowhere (non-blocking mode kept): waiting in the pool.
    Detached(std::net::TcpStream),
    /// A failed attach or detach left nothing; every operation fails.
    Gone,
}

impl Socket {
    /// Registers the socket with the current runtime (no-op when attached).
    pub fn attach(&mut self) -> io::Result<()> {
        if let Socket::Detached(std) = std::mem::replace(self, Socket::Gone) {
            *self = Socket::Attached(TcpStream::from_std(std)?);
        } else if matches!(self, Socket::Gone) {
            return Err(gone());
        }
        Ok(())
    }

    /// Deregisters the socket so another runtime can attach it.
    pub fn detach(&mut self) -> io::Result<()> {
        if let Socket::Attached(tokio) = std::mem::replace(self, Socket::Gone) {
            *self = Socket::Detached(tokio.into_std()?);
        } else if matches!(self, Socket::Gone) {
            return Err(gone());
        }
        Ok(())
    }

    fn attached(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut() {
            Socket::Attached(stream) => Ok(Pin::new(stream)),
            _ => Err(gone()),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "pooled socket not attached")
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.attached() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.attached() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.attached() {
            Ok(stream) => stream.poll_flush(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.attached() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(err) => Poll::Ready(Err(err)),
        }
    }
}
