//! `pier:plugin/stats`: live figures of the listener and its connections.

use std::time::{Duration, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use super::{HostState, peer_record};
use crate::runtime::bindings::pier::plugin::stats;
use crate::tenant::hub::{self, ConnectionId};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

fn connection_stats(s: &hub::ConnectionStats) -> stats::ConnectionStats {
    stats::ConnectionStats {
        peer: peer_record(&s.peer),
        age_ms: millis(s.age),
        frames_in: s.frames_in,
        frames_out: s.frames_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    }
}

impl stats::Host for HostState {
    fn listener(&mut self) -> stats::ListenerStats {
        let s = self.ctx.hub.listener_stats();
        stats::ListenerStats {
            connected: s.connected,
            accepted: s.accepted,
            started_at_ms: ms_since_epoch(s.started_at),
            uptime_ms: millis(s.uptime),
            frames_in: s.frames_in,
            frames_out: s.frames_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        }
    }

    fn connection(&mut self, id: ConnectionId) -> Option<stats::ConnectionStats> {
        self.ctx
            .hub
            .connection_stats(id)
            .as_ref()
            .map(connection_stats)
    }

    fn connections(&mut self) -> Vec<stats::ConnectionStats> {
        self.ctx
            .hub
            .all_connection_stats()
            .iter()
            .map(connection_stats)
            .collect()
    }
}

/// Registers `stats` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    stats::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
