//! The native baseline: a plain tokio server that answers like the echo plugin (`Echo: ` +
//! frame) with the same framing code and the same read-batch / single-write structure as pier,
//! but no WebAssembly. Every pier figure in BENCHMARKS.md is a ratio against this server,
//! measured in the same run (`pier baseline`, started by `pier bench --compare`).

use anyhow::{Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::net::framing::Framing;

/// Serves the native echo on `listener` until the process ends, over TLS when `tls` is given
/// (plain tokio-rustls, the native peer of pier's TLS listener).
pub async fn serve(
    listener: TcpListener,
    framing: Framing,
    max_frame: usize,
    tls: Option<TlsAcceptor>,
) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let _ = stream.set_nodelay(true);
        match tls.clone() {
            None => {
                tokio::spawn(connection(stream, framing, max_frame));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        connection(stream, framing, max_frame).await;
                    }
                });
            }
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    framing: Framing,
    max_frame: usize,
) {
    let mut decoder = framing.decoder(max_frame);
    let mut read_buf = BytesMut::new();
    let mut write_buf = BytesMut::new();
    let mut reply = Vec::new();
    loop {
        read_buf.reserve(decoder.read_hint());
        match stream.read_buf(&mut read_buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match decoder.decode(&mut read_buf) {
                Ok(Some(frame)) => {
                    reply.clear();
                    reply.extend_from_slice(b"Echo: ");
                    reply.extend_from_slice(&frame);
                    if framing.encode(&reply, &mut write_buf).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if stream.write_all(&write_buf).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        write_buf.clear();
    }
}
