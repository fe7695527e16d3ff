//! pier's integration tests, one binary for all of them (each test binary would link wasmtime
//! again). One module per area; `support` holds the in-process server, the binary runner, ports,
//! certificates and clients they share.
//!
//! Run one area with `cargo test --release --test it contract::`, one test by its name.

mod support;

mod admin;
mod builtins;
mod cli;
mod cluster;
mod contract;
mod faults;
mod fleet;
mod framing;
mod hostile;
mod http;
mod languages;
mod limits;
mod live;
mod plugins;
mod proxy;
mod reload;
mod tls;
mod upstream;
mod websocket;
