//! The Rust side of the WIT contract, generated once here and nowhere else, so every other
//! module names the plugin's types through this one place.

wasmtime::component::bindgen!({
    path: "../wit",
    // The widest import set: every plugin world is a subset of it, so one linker serves them
    // all (whether a plugin may use `upstream` is checked per listener at load).
    world: "plugin-with-upstreams",
    anyhow: true,
    // Guest calls run on fibers so a long call can yield its worker (see `instance::time_slice`);
    // an upstream request suspends the call until the reply comes, a cluster-wide claim until
    // NATS answers.
    exports: { default: async },
    imports: {
        "pier:plugin/upstream.request": async,
        "pier:plugin/attributes.claim": async,
    },
});

/// The generated bindings of the plugin world, under the name the rest of the host uses.
pub type Plugin = PluginWithUpstreams;
/// Pre-instantiated bindings (see [`Plugin`]).
pub type PluginPre<T> = PluginWithUpstreamsPre<T>;

pub use self::exports::pier::plugin::handler::Refusal;
pub use self::pier::plugin::connections::SendError;
pub use self::pier::plugin::types::{CloseReason, Level, Peer, TlsPeer};
