//! Embedding pier in another program: load a plugin, bind a listener, serve until Ctrl-C.
//!
//! Run: `cargo run --release --example embed` then `pier send 127.0.0.1:7070 hi --framing lines`.

use std::time::Duration;

use pier::framing::Framing;
use pier::listener::ListenerShared;
use pier::runtime::{Runtime, RuntimeConfig};
use pier::server::{self, ServerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig {
        call_deadline: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })?;
    let echo = pier::builtin::find("echo").expect("echo is built in");
    let plugin = runtime.load_plugin(echo.name, echo.wasm)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
    eprintln!("embedded pier on {}", listener.local_addr()?);
    let shared = ListenerShared::new("embedded", Framing::Lines, 64 * 1024, 256, plugin);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server::run(listener, shared, runtime, ServerConfig::default(), shutdown).await
}
