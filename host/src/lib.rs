//! pier: a TCP server whose message handlers are sandboxed WebAssembly components.
//!
//! The host owns every socket and frame boundary; a plugin (a component implementing the world
//! `pier:plugin/plugin` in `wit/plugin.wit`) sees only whole frames and answers them.
//!
//! # Layout
//!
//! Folders by capability; within them, modules depend only on their own layer or below (see
//! ARCHITECTURE.md "The shape of it"; `scripts/module-cycles` fails on an import cycle or an
//! upward use).
//!
//! - [`sys`]: process-level helpers (a poison-tolerant lock, the open-file limit).
//! - [`limits`]: every limit a listener runs under, with its defaults (plain data).
//! - [`net`]: sockets to plugin calls — server, admission, workers, connections, transport,
//!   TLS, framing.
//! - [`tenant`]: one listener's shared state — the connection registry (`Hub` for plugins,
//!   `Registry` for connections), byte budgets, the listener itself.
//! - [`runtime`]: wasmtime — engine, compiled-plugin cache, loading and checking plugins, the
//!   plugin slot reloads publish to, deny-by-default WASI, the host side of each WIT interface,
//!   per-worker instance pools, deadlines, fair CPU shares, memory caps and fault recovery.
//! - [`upstream`]: outbound connection pools per named upstream (WIT `upstream`).
//! - [`deploy`]: pier.toml, running a config's listeners, reloads (SIGHUP, file watching) and
//!   hot swaps.
//! - [`ops`]: the admin endpoint and Prometheus metrics.
//! - [`builtin`]: plugins embedded in the binary.
//! - [`tools`]: the command line — `serve`, `send`, `check`, `cert`, `new`, `bench`.

pub mod builtin;
pub mod deploy;
pub mod limits;
pub mod net;
pub mod ops;
pub mod runtime;
pub mod sys;
pub mod tenant;
pub mod tools;
pub mod upstream;
