//! The native baseline: a plain tokio server that answers like the echo plugin (`Echo: ` +
//! frame) with the same framing code and the same read-batch / single-write structure as pier,
//! but no WebAssembly. Every pier figure in BENCHMARKS.md is a ratio against this server,
//! measured in the same run (`pier baseline`, started by `pier bench --compare`).

use anyhow::{Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::framing::Framing;

/// Serves the native echo on `listener` until the process ends.
pub async fn serve(listener: TcpListener, framing: Framing, max_frame: usize) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, framing, max_frame));
    }
}

async fn connection(mut stream: TcpStream, framing: Framing, max_frame: usize) {
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
        if stream.write_all(&write_buf).await.is_err() {
            return;
        }
        write_buf.clear();
    }
}
