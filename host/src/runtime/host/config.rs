//! `pier:plugin/config`: the operator's `plugin_config` for this listener.

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::runtime::bindings::pier::plugin::config;

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Registers `config` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    config::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
