//! pier-sdk: write pier plugins in Rust.
//!
//! The bindings for the contract in `wit/plugin.wit` are generated here once, so every plugin
//! shares one set of types (`Peer`, `ConnectionStats`, ...) and the host's interfaces are plain
//! modules: [`connections`], [`attributes`], [`groups`], [`stats`], [`clock`], [`timers`],
//! [`log`], [`config`] and [`upstream`]. A plugin implements [`Plugin`] (only `on_frame` is
//! required) and names its type in [`export!`]:
//!
//! ```no_run
//! struct Echo;
//!
//! impl pier_sdk::Plugin for Echo {
//!     fn on_frame(_id: pier_sdk::ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
//!         Some([b"Echo: ", frame].concat())
//!     }
//! }
//!
//! pier_sdk::export!(Echo);
//! ```
//!
//! The optional callbacks of the contract are traits of their own ([`Timers`], [`Batched`],
//! [`Stateful`]), exported when [`export!`] names them (`export!(T, timers)`). The host detects
//! optional exports at load time, so a plugin exports exactly what it implements: each optional
//! export has its own generated export macro, and only those a plugin invokes put their exports
//! (and the world describing them) into the component.

/// The generated bindings. `handler` and every import are generated once, in
/// [`worlds::plugin`]; each optional export has a one-export world of its own (inline, package
/// `pier:sdk`) that reuses the plugin world's types through `with`. A component is the union of
/// the worlds its `export!` names (wit-component merges their type sections), and imports it
/// never calls are dropped, so a plugin that never calls [`upstream`] does not import it.
pub mod worlds {
    /// `world plugin-with-upstreams`: every import, and the `handler` export.
    pub mod plugin {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "pier:plugin/plugin-with-upstreams",
            pub_export_macro: true,
            export_macro_name: "export_handler",
            default_bindings_module: "pier_sdk::worlds::plugin",
        });
    }

    /// A world exporting one optional interface, with the types of [`plugin`] for the ones it uses.
    macro_rules! optional_export {
        ($world:literal, $wit:literal, $macro:literal, $module:literal $(, $uses:literal => $path:path)*) => {
            wit_bindgen::generate!({
                inline: $wit,
                path: "../../wit",
                world: $world,
                pub_export_macro: true,
                export_macro_name: $macro,
                default_bindings_module: $module,
                with: { $($uses: $path,)* },
            });
        };
    }

    /// `export pier:plugin/timer-handler`.
    pub mod timers {
        optional_export!(
            "pier:sdk/timers",
            "package pier:sdk; world timers { export pier:plugin/timer-handler@0.1.0; }",
            "export_timers",
            "pier_sdk::worlds::timers",
            "pier:plugin/types@0.1.0" => crate::worlds::plugin::pier::plugin::types,
            "pier:plugin/timers@0.1.0" => crate::worlds::plugin::pier::plugin::timers
        );
    }

    /// `export pier:plugin/batch-handler`.
    pub mod batched {
        optional_export!(
            "pier:sdk/batched",
            "package pier:sdk; world batched { export pier:plugin/batch-handler@0.1.0; }",
            "export_batched",
            "pier_sdk::worlds::batched",
            "pier:plugin/types@0.1.0" => crate::worlds::plugin::pier::plugin::types
        );
    }

    /// `export pier:plugin/state-handler`.
    pub mod stateful {
        optional_export!(
            "pier:sdk/stateful",
            "package pier:sdk; world stateful { export pier:plugin/state-handler@0.1.0; }",
            "export_stateful",
            "pier_sdk::worlds::stateful"
        );
    }
}

mod adapt;

pub use worlds::plugin::exports::pier::plugin::handler::Refusal;
pub use worlds::plugin::pier::plugin::types::{CloseReason, ConnectionId, Level, Peer};
pub use worlds::plugin::pier::plugin::{
    attributes, clock, config, connections, groups, log, stats, timers, types, upstream,
};

/// A plugin: the callbacks of the contract's `handler` interface. The host calls them one at a
/// time per instance, and may replace an instance at any frame boundary, so anything that must
/// outlive a call belongs in the host (attributes, groups, timers), not in statics.
pub trait Plugin {
    /// A connection was accepted. `Ok(Some(greeting))` sends a first frame, `Ok(None)` stays
    /// silent (the default), `Err(refusal)` closes the connection at once.
    fn on_open(peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        let _ = peer;
        Ok(None)
    }

    /// A complete frame from connection `id`, framing removed; the returned frame, if any, is
    /// the reply.
    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>>;

    /// Connection `id` has ended (it has left its groups; its attributes can still be read).
    /// Does nothing by default.
    fn on_close(id: ConnectionId, reason: CloseReason) {
        let _ = (id, reason);
    }
}

/// The optional `timer-handler` export: plugins that start [`timers`]. Export with
/// `export!(T, timers)`.
pub trait Timers: Plugin {
    /// Timer `timer` of connection `id` fired; the returned frame, if any, is written to it.
    fn on_timer(id: ConnectionId, timer: timers::TimerId) -> Option<Vec<u8>>;
}

/// The optional `batch-handler` export: several pipelined frames of one connection per call.
/// Export with `export!(T, batched)`. The default answers each frame with
/// [`Batched::reply_into`], which calls [`Plugin::on_frame`], so `impl Batched for T {}` is
/// enough; override `reply_into` to write replies without an allocation per frame.
pub trait Batched: Plugin {
    /// Appends the reply to `frame` to `out` and returns true, or returns false for no reply.
    fn reply_into(id: ConnectionId, frame: &[u8], out: &mut Vec<u8>) -> bool {
        match Self::on_frame(id, frame) {
            Some(reply) => {
                out.extend_from_slice(&reply);
                true
            }
            None => false,
        }
    }
}

/// The optional `state-handler` export: guest memory carried across a reload. Export with
/// `export!(T, stateful)`.
pub trait Stateful: Plugin {
    /// This instance's state, in any encoding the plugin's next version understands.
    fn snapshot() -> Vec<u8>;

    /// Called once on a fresh instance of the new version with the old version's snapshot.
    fn restore(state: Vec<u8>);
}

/// Exports a type implementing [`Plugin`] as the component's handler, plus the optional
/// callbacks named after it: `export!(T)`, `export!(T, batched)`, `export!(T, timers, stateful)`.
///
/// - `timers`: exports `timer-handler`; `T: Timers`.
/// - `batched`: exports `batch-handler`; `T: Batched`.
/// - `stateful`: exports `state-handler`; `T: Stateful`.
///
/// Imports need no naming: a plugin imports exactly the interfaces it calls.
#[macro_export]
macro_rules! export {
    ($ty:ident $(, $optional:ident)* $(,)?) => {
        $crate::worlds::plugin::export_handler!($ty with_types_in $crate::worlds::plugin);
        $($crate::__export_optional!($ty, $optional);)*
    };
}

/// One optional export of [`export!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __export_optional {
    ($ty:ident, timers) => {
        $crate::worlds::timers::export_timers!($ty with_types_in $crate::worlds::timers);
    };
    ($ty:ident, batched) => {
        $crate::worlds::batched::export_batched!($ty with_types_in $crate::worlds::batched);
    };
    ($ty:ident, stateful) => {
        $crate::worlds::stateful::export_stateful!($ty with_types_in $crate::worlds::stateful);
    };
}
