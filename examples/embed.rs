//! Embedding pier in another program: load a plugin, bind a listener, serve until Ctrl-C.
//!
//! Run: `cargo run --release --example embed -- [ADDR]`, then
//! `pier send 127.0.0.1:7070 hi --framing lines`.
//!
//! The address is the first argument, else `$PIER_EMBED_ADDR`, else `127.0.0.1:7070`; port 0
//! picks a free port. The bound address is printed as `embedded pier on ADDR`.

use std::time::Duration;

use anyhow::Context;
use pier::{Framing, Listener, Server};

/// Where to listen when neither an argument nor `$PIER_EMBED_ADDR` says.
const DEFAULT_ADDR: &str = "127.0.0.1:7070";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PIER_EMBED_ADDR").ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let server = Server::builder()
        .call_deadline(Duration::from_millis(500))
        .workers(2)
        .build()?;
    let echo = pier::builtin::find("echo").context("echo is built in")?;
    let plugin = server.load_plugin(echo.name, echo.wasm)?;
    let listener = Listener::builder("embedded", plugin)
        .framing(Framing::Lines)
        .max_frame(64 * 1024)
        .build();
    let socket = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = server.add(socket, listener)?;
    eprintln!("embedded pier on {bound}");
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    Ok(())
}
