//! pier: a TCP server whose message handlers are sandboxed WebAssembly components.
//!
//! The host owns every socket and frame boundary; a plugin (a component implementing the world
//! `pier:plugin/plugin` in `wit/plugin.wit`) sees only whole frames and answers them.
//!
//! # Layout
//!
//! - [`cli`]: the `pier` command line (`serve`, `reload`, `send`, `check`, `cert`, `bench`).
//! - [`config`]: pier.toml — parsing and validating every value before anything binds.
//! - [`envsubst`]: `${NAME}` and `${NAME:-default}` in pier.toml, from the environment.
//! - [`deploy`]: running a config's listeners; reloads (SIGHUP, file watching) and hot swaps.
//! - [`server`]: the worker pool and the accept loops of any number of listeners, drain.
//! - [`admin`]: the admin HTTP endpoint (`/metrics`, `/healthz`, `/plugins`, `/connections`,
//!   `POST /reload`).
//! - [`metrics`]: Prometheus metric families and the handles listeners and plugin versions
//!   update.
//! - [`admission`]: connection limits per listener and per client address.
//! - [`budget`]: what a tenant may make the host hold (queued output, partial frames,
//!   attributes, groups, timers), in bytes, over all its connections.
//! - [`worker`]: worker threads, each with its own runtime and plugin instances; connections are
//!   pinned to one worker.
//! - [`connection`]: one client — read, frame, call the plugin, write replies.
//! - [`transport`]: plain TCP or TLS streams, read into a per-worker scratch buffer.
//! - [`tls`]: rustls server and client settings, peer identity, `pier cert generate`.
//! - [`framing`]: raw, lines and length-prefixed framing with a frame-size limit.
//! - [`limits`]: every limit a listener runs under, with its defaults (plain data).
//! - [`listener`]: what a listener serves (name, framing, limits, plugin, registry).
//! - [`hub`]: the connection registry behind the plugin's `connections` interface.
//! - [`runtime`]: wasmtime engine, compiled-plugin cache, loading and checking plugins, the
//!   plugin slot reloads publish to, deny-by-default WASI, per-worker instances with deadlines,
//!   time slicing, memory caps and fault recovery.
//! - [`builtin`]: plugins embedded in the binary (echo).
//! - [`scaffold`]: `pier new`, plugin projects in Rust, Python or JavaScript.
//! - [`upstream`]: outbound connection pools per named upstream, used by plugins (WIT
//!   `upstream`) and `pier send --repeat`.
//! - [`client`]: the client side used by `pier send`.
//! - [`sys`]: process-level helpers (a poison-tolerant lock, the open-file limit).
//! - [`bench`]: `pier bench` (load generator) and `pier baseline` (the native server it compares
//!   pier with).

pub mod admin;
pub mod admission;
pub mod bench;
pub mod budget;
pub mod builtin;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod deploy;
pub mod envsubst;
pub mod framing;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod worker;
