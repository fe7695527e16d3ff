//! `pier:plugin/groups`: named groups of connections (join, leave, members, send).

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::runtime::bindings::pier::plugin::groups;
use crate::tenant::hub::{self, ConnectionId};

impl groups::Host for HostState {
    fn join(&mut self, id: ConnectionId, group: String) -> Result<(), groups::GroupError> {
        use groups::GroupError as E;
        self.ctx.hub.join(id, &group).map_err(|e| match e {
            hub::GroupError::UnknownConnection => E::UnknownConnection,
            hub::GroupError::BadName => E::BadName,
            hub::GroupError::TooMany => E::TooMany,
        })
    }

    fn leave(&mut self, id: ConnectionId, group: String) -> bool {
        self.ctx.hub.leave(id, &group)
    }

    fn members(&mut self, group: String) -> Vec<ConnectionId> {
        self.ctx.hub.members(&group)
    }

    fn groups_of(&mut self, id: ConnectionId) -> Vec<String> {
        self.ctx.hub.groups_of(id)
    }

    fn send(&mut self, group: String, frame: Vec<u8>, except: Option<ConnectionId>) -> u32 {
        self.ctx.hub.group_send(&group, Bytes::from(frame), except)
    }
}

/// Registers `groups` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    groups::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
