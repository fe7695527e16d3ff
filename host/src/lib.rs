//! pier: a TCP server whose message handlers are sandboxed WebAssembly components.
//!
//! The host owns every socket and frame boundary; a plugin (a component implementing the world
//! `pier:plugin/plugin` in `wit/plugin.wit`) sees only whole frames and answers them.
//!
//! # Using pier as a library
//!
//! The supported surface is what this file re-exports: [`Server`] (built with
//! [`Server::builder`]), [`Listener`] (built with [`Listener::builder`]), [`Framing`],
//! [`Limits`], the [`Runtime`] and its [`RuntimeConfig`], [`LoadedPlugin`] and [`LoadError`],
//! [`Config`] and [`Deployer`] for running a pier.toml, and the [`builtin`] plugins.
//! `examples/embed.rs` is the program below in full (built by `cargo test`, so it keeps
//! compiling against this surface).
//!
//! ```ignore
//! # async fn serve() -> anyhow::Result<()> {
//! let server = pier::Server::builder().workers(2).build()?;
//! let echo = pier::builtin::find("echo").expect("built in");
//! let plugin = server.load_plugin(echo.name, echo.wasm)?;
//! let listener = pier::Listener::builder("echo", plugin)
//!     .framing(pier::Framing::Lines)
//!     .build();
//! let socket = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! server.add(socket, listener)?;
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! The modules are private to the crate (their shape may change); folders by capability, and
//! within them, modules depend only on their own layer or below (see
//! ARCHITECTURE.md "The shape of it"; `scripts/module-cycles` fails on an import cycle or an
//! upward use).
//!
//! - `sys`: process-level helpers (a poison-tolerant lock, the open-file limit).
//! - `limits`: every limit a listener runs under, with its defaults (plain data).
//! - `net`: sockets to plugin calls — server, admission, workers, connections, transport,
//!   TLS, framing.
//! - `tenant`: one listener's shared state — the connection registry (`Hub` for plugins,
//!   `Registry` for connections), byte budgets, the listener itself.
//! - `runtime`: wasmtime — engine, compiled-plugin cache, loading and checking plugins, the
//!   plugin slot reloads publish to, deny-by-default WASI, the host side of each WIT interface,
//!   per-worker instance pools, deadlines, fair CPU shares, memory caps and fault recovery.
//! - `upstream`: outbound connection pools per named upstream (WIT `upstream`).
//! - `deploy`: pier.toml, running a config's listeners, reloads (SIGHUP, file watching) and
//!   hot swaps.
//! - `ops`: the admin endpoint and Prometheus metrics.
//! - [`builtin`]: plugins embedded in the binary.
//! - `tools`: the command line — `serve`, `send`, `check`, `cert`, `new`, `bench`.

pub mod builtin;
pub(crate) mod cluster;
pub(crate) mod deploy;
pub(crate) mod limits;
pub(crate) mod net;
pub(crate) mod ops;
pub(crate) mod runtime;
pub(crate) mod sys;
pub(crate) mod tenant;
pub(crate) mod tools;
pub(crate) mod upstream;

// What an embedder uses (README "Using pier as a library"); the modules above are the
// implementation and may change shape between releases.
pub use deploy::config::Config;
pub use deploy::{Deployer, ReloadReport};
pub use limits::Limits;
pub use net::framing::Framing;
pub use net::server::{Server, ServerBuilder};
pub use net::tls::TlsListener;
pub use runtime::{FaultKind, LoadError, LoadedPlugin, PluginConfig, Runtime, RuntimeConfig};
pub use tenant::budget::BudgetKind;
pub use tenant::listener::{ListenerBuilder, ListenerShared as Listener};

/// Runs the `pier` command line (the binary's whole `main`).
pub fn cli() -> std::process::ExitCode {
    tools::cli::main()
}

/// Internals that pier's own benchmarks and tests reach into; not a supported API.
#[doc(hidden)]
pub mod internals {
    pub use crate::runtime::PluginInstance;
    pub use crate::runtime::cache::ArtifactCache;
}
