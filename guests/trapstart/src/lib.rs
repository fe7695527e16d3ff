//! Test plugin: the echo plugin plus a constructor that traps, so the component traps while it
//! is being instantiated. pier must refuse it at load (and keep the old version on a reload)
//! instead of faulting every connection later.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::pier::plugin::handler::{CloseReason, ConnectionId, Guest, Peer, Refusal};

/// Runs with the module's other constructors, when the component is instantiated.
extern "C" fn trap_at_start() {
    core::arch::wasm32::unreachable()
}

#[used]
#[unsafe(link_section = ".init_array")]
static TRAP_AT_START: extern "C" fn() = trap_at_start;

struct TrapStart;

impl Guest for TrapStart {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(None)
    }

    fn on_frame(_id: ConnectionId, frame: Vec<u8>) -> Option<Vec<u8>> {
        Some([b"Echo: ".as_slice(), &frame].concat())
    }

    fn on_close(_id: ConnectionId, _reason: CloseReason) {}
}

export!(TrapStart);
