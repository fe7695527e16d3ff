//! The native baseline: a plain tokio server that answers like the echo plugin (`Echo: ` +
//! frame) with the same framing code and the same read-batch / single-write structure as pier,
//! but no WebAssembly. Every pier figure in BENCHMARKS.md is a ratio against this server,
//! measured in the same run (`pier baseline`, started by `pier bench --compare`).
//!
//! For WebSocket the baseline is tokio-tungstenite — tokio plus the protocol crate pier's codec
//! uses — answering each message with one of the same kind, flushing once per batch of messages
//! already read, as pier writes once per read.

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
                tokio::spawn(serve_one(stream, framing, max_frame));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_one(stream, framing, max_frame).await;
                    }
                });
            }
        }
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    framing: Framing,
    max_frame: usize,
) {
    if framing == Framing::WebSocket {
        websocket(stream, max_frame).await;
    } else {
        connection(stream, framing, max_frame).await;
    }
}

async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(stream: S, max_frame: usize) {
    use futures_util::{FutureExt, SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // tungstenite zeroes its read buffer's spare room before each read; at its default 128 KiB
    // that memset was a quarter of the baseline's CPU (perf), so it reads 8 KiB at a time, as
    // much as a read of small messages brings.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .read_buffer_size(8 * 1024);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let answer = |message: Message| -> Option<Message> {
        match message {
            Message::Text(text) => Some(Message::text(format!("Echo: {}", text.as_str()))),
            Message::Binary(data) => {
                let mut reply = Vec::with_capacity(6 + data.len());
                reply.extend_from_slice(b"Echo: ");
                reply.extend_from_slice(&data);
                Some(Message::binary(reply))
            }
            _ => None,
        }
    };
    while let Some(Ok(message)) = ws.next().await {
        let mut batch = vec![message];
        // What has already arrived is answered in the same write.
        while let Some(Some(Ok(more))) = ws.next().now_or_never() {
            batch.push(more);
        }
        for message in batch {
            if let Some(reply) = answer(message)
                && ws.feed(reply).await.is_err()
            {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
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
