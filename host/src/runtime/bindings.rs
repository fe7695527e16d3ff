//! The Rust side of the WIT contract, generated once here and nowhere else, so every other
//! module names the plugin's types through this one place.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    anyhow: true,
});

pub use self::exports::pier::plugin::handler::Refusal;
pub use self::pier::plugin::connections::SendError;
pub use self::pier::plugin::types::{CloseReason, Level, Peer, TlsPeer};
