//! `pier:plugin/attributes`: per-connection key/value attributes, charged to the tenant's
//! attribute budget by the hub.

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::runtime::bindings::pier::plugin::attributes;
use crate::tenant::hub::{self, ConnectionId};

impl attributes::Host for HostState {
    fn set(
        &mut self,
        id: ConnectionId,
        key: String,
        value: String,
    ) -> Result<(), attributes::AttributeError> {
        use attributes::AttributeError as E;
        self.ctx
            .hub
            .set_attribute(id, &key, value)
            .map_err(|e| match e {
                hub::AttributeError::UnknownConnection => E::UnknownConnection,
                hub::AttributeError::BadKey => E::BadKey,
                hub::AttributeError::ValueTooLong => E::ValueTooLong,
                hub::AttributeError::TooMany => E::TooMany,
            })
    }

    fn get(&mut self, id: ConnectionId, key: String) -> Option<String> {
        self.ctx.hub.attribute(id, &key)
    }

    fn remove(&mut self, id: ConnectionId, key: String) -> Option<String> {
        self.ctx.hub.remove_attribute(id, &key)
    }

    fn all(&mut self, id: ConnectionId) -> Vec<(String, String)> {
        self.ctx.hub.attributes(id)
    }

    fn find(&mut self, key: String, value: String) -> Vec<ConnectionId> {
        self.ctx.hub.find_attribute(&key, &value)
    }
}

/// Registers `attributes` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    attributes::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
