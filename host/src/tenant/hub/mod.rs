//! The connection registry of one listener: who is connected, how to reach them, and the
//! durable per-connection state plugins keep in the host (attributes, groups, timers, counters).
//!
//! This is the state behind the WIT `connections`, `attributes`, `groups`, `stats` and `timers`
//! interfaces. It lives in the host and is shared by every worker thread and every plugin
//! instance of the listener, so an instance can be recreated at any moment without losing track
//! of anyone. It sits behind the narrow [`Hub`] trait because it is the one piece that will
//! later span machines; [`LocalHub`] is the in-process implementation. Every operation is
//! non-blocking and bounded: queues are bounded, attribute/group/timer counts are capped.
//!
//! One file per capability: [`connections`] (send, broadcast, close, peers), [`attributes`],
//! [`groups`], [`timers`], [`counters`] (traffic and the WIT `stats`), and [`mailbox`] (each
//! connection's bounded inbox). This file holds what they share: the connection map, the
//! [`Hub`] and [`Registry`] traits and entering and leaving the registry.

pub mod attributes;
pub mod connections;
pub mod counters;
pub mod groups;
pub mod mailbox;
pub mod timers;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime};

use prometheus::IntCounter;

use crate::limits::SlowConsumer;
use crate::sys::lock;
use crate::tenant::budget::{BudgetKind, Budgets};

pub use attributes::{AttributeError, Attributes, ClaimError, ClaimFuture};
pub use connections::{Connections, SendError};
pub use counters::{ConnectionStats, Counters, Meter, Stats, Tally};
pub use groups::{GroupError, Groups};
pub use mailbox::{Control, Delivery, Mailbox};
use mailbox::{Inbox, QueueRules};
pub use timers::{TimerError, TimerId, Timers};

/// Identifies a connection; unique for the process lifetime and never reused. Handed out per
/// tenant (`ListenerShared::next_connection_id`), so an id tells nothing about other tenants.
pub type ConnectionId = u64;

/// Longest attribute key or group name.
pub const MAX_NAME: usize = 256;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 64 * 1024;
/// Most attributes, groups or timers one connection may have.
pub const MAX_PER_CONNECTION: usize = 64;

/// What the host knows about a connected peer (mirrors WIT `types.peer`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The connection id.
    pub id: ConnectionId,
    /// The client's address.
    pub remote_addr: String,
    /// The local address it connected to.
    pub local_addr: String,
    /// The listener's name.
    pub listener: Arc<str>,
    /// When it was accepted.
    pub connected_at: SystemTime,
    /// What the TLS handshake established, on TLS listeners (boxed: most peers have none,
    /// and this record is kept for every connection).
    pub tls: Option<Box<crate::net::tls::TlsInfo>>,
}

/// What a plugin can do with its listener's connections: the WIT's `connections`,
/// `attributes`, `groups`, `stats` and `timers` calls, one trait per interface. Every method is
/// non-blocking. This is the seam a registry spanning several processes replaces; the
/// connection task's side is [`Registry`].
pub trait Hub: Connections + Attributes + Groups + Stats + Timers {}

impl<T: Connections + Attributes + Groups + Stats + Timers> Hub for T {}

/// What only the connection tasks do: enter and leave the registry and report fired timers.
/// Plugins never see these ([`Hub`] is their view).
pub trait Registry: Hub {
    /// Adds a connection; what is queued for it arrives on the returned [`Mailbox`].
    fn register(&self, peer: PeerInfo) -> Mailbox;
    /// Starts closing a connection: it leaves every group, disappears from `peers`, and sends
    /// to it fail, but its attributes stay readable until `unregister` (for `on-close`).
    fn begin_close(&self, id: ConnectionId);
    /// Removes a connection and everything it had.
    fn unregister(&self, id: ConnectionId);
    /// Called by the connection task when a one-shot timer has fired.
    fn timer_done(&self, id: ConnectionId, timer: TimerId);
}

struct Entry {
    peer: PeerInfo,
    accepted: Instant,
    inbox: Arc<Inbox>,
    /// Set once a close was requested; later sends fail with `Closing`.
    close_requested: AtomicBool,
    counters: Arc<Counters>,
    /// Set by `begin_close`: the connection is on its way out.
    closing: AtomicBool,
    attributes: Mutex<HashMap<String, String>>,
    groups: Mutex<HashSet<String>>,
    timers: Mutex<HashSet<TimerId>>,
}

impl Entry {
    fn is_open(&self) -> bool {
        !self.closing.load(Ordering::Relaxed)
    }
}

/// The in-process [`Hub`].
pub struct LocalHub {
    /// Every registered connection (open or closing). Read-mostly.
    entries: RwLock<HashMap<ConnectionId, Entry>>,
    /// Group name → members. Kept apart from `entries` so group sends do not scan everyone.
    groups: RwLock<HashMap<String, HashSet<ConnectionId>>>,
    /// Timer → its connection, so `cancel` can find the task that owns the timer.
    timer_owners: Mutex<HashMap<TimerId, ConnectionId>>,
    /// Held by a claim between its check and its set, so claims are atomic among themselves.
    claiming: Mutex<()>,
    /// How deep a connection's write queue may get and what happens beyond.
    full: QueueRules,
    /// The listener's maximum frame size.
    max_frame: usize,
    /// Listener-wide traffic.
    totals: Arc<Counters>,
    /// Connections accepted since start.
    accepted: AtomicU64,
    /// When the listener started (wall clock, for display).
    started_at: SystemTime,
    /// When the listener started (monotonic, for uptime).
    started: Instant,
}

impl LocalHub {
    /// An empty registry whose connections each queue at most `write_queue` frames, beyond
    /// which frames are dropped.
    pub fn new(write_queue: usize, max_frame: usize) -> Self {
        Self::with_policy(write_queue, max_frame, SlowConsumer::Drop)
    }

    /// An empty registry with the given slow-consumer policy.
    pub fn with_policy(write_queue: usize, max_frame: usize, slow_consumer: SlowConsumer) -> Self {
        LocalHub {
            full: QueueRules {
                limit: write_queue.max(1),
                bytes: crate::limits::DEFAULT_WRITE_QUEUE_BYTES,
                budgets: Arc::new(Budgets::default()),
                policy: slow_consumer,
                dropped: crate::ops::metrics::detached_counter(),
                closed: crate::ops::metrics::detached_counter(),
            },
            entries: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            timer_owners: Mutex::new(HashMap::new()),
            claiming: Mutex::new(()),
            max_frame,
            totals: Arc::new(Counters::default()),
            accepted: AtomicU64::new(0),
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// Counts frames dropped and connections closed by the slow-consumer policy in the given
    /// counters.
    pub fn counting_full_queues(mut self, dropped: IntCounter, closed: IntCounter) -> Self {
        self.full.dropped = dropped;
        self.full.closed = closed;
        self
    }

    /// Bounds what may wait for one connection in bytes and charges the tenant's `budgets`
    /// for queued output, attributes, group memberships and timers.
    pub fn with_budgets(mut self, write_queue_bytes: usize, budgets: Arc<Budgets>) -> Self {
        self.full.bytes = write_queue_bytes.max(1);
        self.full.budgets = budgets;
        self
    }

    fn budget(&self, kind: BudgetKind) -> &crate::tenant::budget::Budget {
        self.full.budgets.of(kind)
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<ConnectionId, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ConnectionId, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    fn groups_read(&self) -> RwLockReadGuard<'_, HashMap<String, HashSet<ConnectionId>>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn groups_write(&self) -> RwLockWriteGuard<'_, HashMap<String, HashSet<ConnectionId>>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    fn release_groups(&self, names: &HashSet<String>) {
        self.budget(BudgetKind::GroupBytes)
            .release(names.iter().map(String::len).sum());
    }

    fn remove_from_groups(&self, id: ConnectionId, names: &HashSet<String>) {
        let mut groups = self.groups_write();
        for name in names {
            if let Some(members) = groups.get_mut(name) {
                members.remove(&id);
                if members.is_empty() {
                    groups.remove(name);
                }
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

impl Registry for LocalHub {
    fn register(&self, peer: PeerInfo) -> Mailbox {
        let inbox = Arc::new(Inbox::new(self.full.budgets.clone()));
        let counters = Arc::new(Counters::default());
        let id = peer.id;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.write().insert(
            id,
            Entry {
                peer,
                accepted: Instant::now(),
                inbox: inbox.clone(),
                close_requested: AtomicBool::new(false),
                counters: counters.clone(),
                closing: AtomicBool::new(false),
                attributes: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashSet::new()),
                timers: Mutex::new(HashSet::new()),
            },
        );
        Mailbox {
            inbox,
            meter: Meter {
                conn: counters,
                listener: self.totals.clone(),
            },
        }
    }

    fn begin_close(&self, id: ConnectionId) {
        let groups = {
            let entries = self.read();
            let Some(entry) = entries.get(&id) else {
                return;
            };
            entry.closing.store(true, Ordering::Relaxed);
            std::mem::take(&mut *lock(&entry.groups))
        };
        self.remove_from_groups(id, &groups);
        self.release_groups(&groups);
    }

    fn unregister(&self, id: ConnectionId) {
        let Some(entry) = self.write().remove(&id) else {
            return;
        };
        let groups = std::mem::take(&mut *lock(&entry.groups));
        self.remove_from_groups(id, &groups);
        self.release_groups(&groups);
        let attribute_bytes: usize = lock(&entry.attributes)
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.budget(BudgetKind::AttributeBytes)
            .release(attribute_bytes);
        let timers = std::mem::take(&mut *lock(&entry.timers));
        self.budget(BudgetKind::Timers).release(timers.len());
        let mut owners = lock(&self.timer_owners);
        for timer in timers {
            owners.remove(&timer);
        }
    }

    fn timer_done(&self, id: ConnectionId, timer: TimerId) {
        lock(&self.timer_owners).remove(&timer);
        if let Some(entry) = self.read().get(&id)
            && lock(&entry.timers).remove(&timer)
        {
            self.budget(BudgetKind::Timers).release(1);
        }
    }
}

#[cfg(test)]
mod tests;
