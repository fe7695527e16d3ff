//! The Rust side of the WIT contract, generated once here and nowhere else, so every other
//! module names the plugin's types through this one place.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    anyhow: true,
    // Guest calls run on fibers so a long call can yield its worker (see `instance::time_slice`).
    exports: { default: async },
});

pub use self::exports::pier::plugin::handler::Refusal;
pub use self::pier::plugin::connections::SendError;
pub use self::pier::plugin::types::{CloseReason, Level, Peer, TlsPeer};
