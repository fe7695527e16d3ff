//! `pier:plugin/connections`: send, broadcast, close, peers and lookup on the listener's
//! registry; the hub's send errors mapped to the WIT's.

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker};

use super::{HostState, peer_record};
use crate::runtime::bindings::pier::plugin::connections;
use crate::runtime::bindings::{Peer, SendError};
use crate::tenant::hub::{self, ConnectionId};

fn send_error(err: hub::SendError) -> SendError {
    match err {
        hub::SendError::UnknownConnection => SendError::UnknownConnection,
        hub::SendError::Closing => SendError::Closing,
        hub::SendError::FrameTooLarge => SendError::FrameTooLarge,
        hub::SendError::QueueFull => SendError::QueueFull,
    }
}

impl connections::Host for HostState {
    fn send(&mut self, to: ConnectionId, frame: Vec<u8>) -> Result<(), SendError> {
        let sent = self.ctx.hub.send(to, Bytes::from(frame));
        if sent == Err(hub::SendError::QueueFull) {
            self.refused_sends += 1;
        }
        sent.map_err(send_error)
    }

    fn broadcast(&mut self, frame: Vec<u8>, except: Option<ConnectionId>) -> u32 {
        self.ctx.hub.broadcast(Bytes::from(frame), except)
    }

    fn close(&mut self, id: ConnectionId) -> bool {
        self.ctx.hub.close(id)
    }

    fn peers(&mut self) -> Vec<Peer> {
        self.ctx.hub.peers().iter().map(peer_record).collect()
    }

    fn lookup(&mut self, id: ConnectionId) -> Option<Peer> {
        self.ctx.hub.lookup(id).as_ref().map(peer_record)
    }
}

/// Registers `connections` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    connections::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
