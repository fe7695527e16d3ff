//! The `pier` command line and the tools behind its subcommands.
//!
//! - [`cli`]: argument parsing and `serve`, `reload`, `send`, `check`, `cert`, `new`, `bench`.
//! - [`client`]: the client side used by `pier send`.
//! - [`scaffold`]: `pier new`, plugin projects in Rust, Python or JavaScript.
//! - [`rollout`]: `pier deploy --cluster`, a plugin version onto every node of a cluster.
//! - [`bench`]: `pier bench` (load generator) and `pier baseline` (the native server it
//!   compares pier with).

pub mod bench;
pub mod cli;
pub mod client;
pub mod rollout;
pub mod scaffold;
