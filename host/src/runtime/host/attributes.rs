//! `pier:plugin/attributes`: per-connection key/value attributes, charged to the tenant's
//! attribute budget by the hub; `claim`, the atomic "take it if nobody holds it", waits for the
//! cluster when there is one (excused from the call deadline like an upstream request).

use wasmtime::component::{HasSelf, Linker};

use super::{Excuse, HostState};
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

    async fn claim(
        &mut self,
        id: ConnectionId,
        key: String,
        value: String,
    ) -> Result<(), attributes::ClaimError> {
        use attributes::ClaimError as E;
        let hub = self.ctx.hub.clone();
        // A cluster's claim waits for NATS; its own 2 s bound limits that, not the deadline.
        let excuse = Excuse::begin(&self.excused);
        let result = hub.claim_attribute(id, &key, value).await;
        drop(excuse);
        self.resumed_from_wait = true;
        result.map_err(|e| match e {
            hub::ClaimError::UnknownConnection => E::UnknownConnection,
            hub::ClaimError::BadKey => E::BadKey,
            hub::ClaimError::ValueTooLong => E::ValueTooLong,
            hub::ClaimError::TooMany => E::TooMany,
            hub::ClaimError::Taken => E::Taken,
            hub::ClaimError::Unavailable => E::Unavailable,
        })
    }

    fn find(&mut self, key: String, value: String) -> Vec<ConnectionId> {
        self.ctx.hub.find_attribute(&key, &value)
    }
}

/// Registers `attributes` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    attributes::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
