//! Test plugin: the echo plugin plus a constructor that traps, so the component traps while it
//! is being instantiated. pier must refuse it at load (and keep the old version on a reload)
//! instead of faulting every connection later.

use pier_sdk::{ConnectionId, Plugin};

/// Runs with the module's other constructors, when the component is instantiated.
extern "C" fn trap_at_start() {
    core::arch::wasm32::unreachable()
}

#[used]
#[unsafe(link_section = ".init_array")]
static TRAP_AT_START: extern "C" fn() = trap_at_start;

struct TrapStart;

impl Plugin for TrapStart {
    fn on_frame(_id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        Some([b"Echo: ".as_slice(), frame].concat())
    }
}

pier_sdk::export!(TrapStart);
