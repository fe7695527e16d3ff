//! Traffic counters and the WIT `stats` side of the registry: per-connection and listener-wide
//! frames and bytes, counted by the connection tasks in batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{ConnectionId, Entry, LocalHub, PeerInfo};

/// Frame and byte counters, for one connection or a whole listener.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames written.
    pub frames_out: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.frames_in.load(Ordering::Relaxed),
            self.frames_out.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// A connection's counters plus its listener's, updated together by the connection task.
#[derive(Clone, Debug)]
pub struct Meter {
    pub(super) conn: Arc<Counters>,
    pub(super) listener: Arc<Counters>,
}

/// Traffic counted by a connection task since it last reported, so the shared atomics are
/// touched once per batch rather than several times per frame (they are shared by every worker
/// of the listener, and contended cache lines cost more than the frames themselves).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Frames received.
    pub frames_in: u64,
    /// Frames written.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

impl Meter {
    /// Adds `tally` to the connection's and the listener's counters and resets it.
    pub fn record(&self, tally: &mut Tally) {
        for counters in [&self.conn, &self.listener] {
            let add = |counter: &AtomicU64, n: u64| {
                if n > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
            };
            add(&counters.frames_in, tally.frames_in);
            add(&counters.frames_out, tally.frames_out);
            add(&counters.bytes_in, tally.bytes_in);
            add(&counters.bytes_out, tally.bytes_out);
        }
        *tally = Tally::default();
    }
}

/// Listener-wide figures (mirrors WIT `stats.listener-stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections open now.
    pub connected: u32,
    /// Connections accepted since start.
    pub accepted: u64,
    /// When the listener started.
    pub started_at: SystemTime,
    /// How long ago that was.
    pub uptime: Duration,
    /// Frames received.
    pub frames_in: u64,
    /// Frames written.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// One connection's figures (mirrors WIT `stats.connection-stats`).
#[derive(Clone, Debug)]
pub struct ConnectionStats {
    /// Who it is.
    pub peer: PeerInfo,
    /// How long it has been open.
    pub age: Duration,
    /// Frames received.
    pub frames_in: u64,
    /// Frames written.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// Live figures (WIT `stats`).
pub trait Stats: Send + Sync {
    /// Listener-wide figures.
    fn listener_stats(&self) -> ListenerStats;
    /// One open connection's figures.
    fn connection_stats(&self, id: ConnectionId) -> Option<ConnectionStats>;
    /// Every open connection's figures.
    fn all_connection_stats(&self) -> Vec<ConnectionStats>;
}

impl Stats for LocalHub {
    fn listener_stats(&self) -> ListenerStats {
        let (frames_in, frames_out, bytes_in, bytes_out) = self.totals.snapshot();
        let connected = self.read().values().filter(|e| e.is_open()).count();
        ListenerStats {
            connected: u32::try_from(connected).unwrap_or(u32::MAX),
            accepted: self.accepted.load(Ordering::Relaxed),
            started_at: self.started_at,
            uptime: self.started.elapsed(),
            frames_in,
            frames_out,
            bytes_in,
            bytes_out,
        }
    }

    fn connection_stats(&self, id: ConnectionId) -> Option<ConnectionStats> {
        self.read()
            .get(&id)
            .filter(|e| e.is_open())
            .map(Entry::stats)
    }

    fn all_connection_stats(&self) -> Vec<ConnectionStats> {
        self.read()
            .values()
            .filter(|e| e.is_open())
            .map(Entry::stats)
            .collect()
    }
}

impl Entry {
    pub(super) fn stats(&self) -> ConnectionStats {
        let (frames_in, frames_out, bytes_in, bytes_out) = self.counters.snapshot();
        ConnectionStats {
            peer: self.peer.clone(),
            age: self.accepted.elapsed(),
            frames_in,
            frames_out,
            bytes_in,
            bytes_out,
        }
    }
}
