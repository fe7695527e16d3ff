//! `pier:plugin/clock`: wall-clock milliseconds.

use wasmtime::component::{HasSelf, Linker};

use super::{HostState, now_ms};
use crate::runtime::bindings::pier::plugin::clock;

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
}

/// Registers `clock` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    clock::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
