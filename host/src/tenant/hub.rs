//! The connection registry of one listener: who is connected, how to reach them, and the
//! durable per-connection state plugins keep in the host (attributes, groups, timers, counters).
//!
//! This is the state behind the WIT `connections`, `attributes`, `groups`, `stats` and `timers`
//! interfaces. It lives in the host and is shared by every worker thread and every plugin
//! instance of the listener, so an instance can be recreated at any moment without losing track
//! of anyone. It sits behind the narrow [`Hub`] trait because it is the one piece that will
//! later span machines; [`LocalHub`] is the in-process implementation. Every operation is
//! non-blocking and bounded: queues are bounded, attribute/group/timer counts are capped.

use crate::limits::SlowConsumer;
use crate::sys::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus::IntCounter;

use crate::tenant::budget::{BudgetKind, Budgets};
use tokio::sync::Notify;

/// Identifies a connection; unique for the process lifetime and never reused. Handed out per
/// tenant (`ListenerShared::next_connection_id`), so an id tells nothing about other tenants.
pub type ConnectionId = u64;

/// Identifies a timer; unique for the process lifetime.
pub type TimerId = u64;

static NEXT_TIMER: AtomicU64 = AtomicU64::new(1);

/// Longest attribute key or group name.
pub const MAX_NAME: usize = 256;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 64 * 1024;
/// Most attributes, groups or timers one connection may have.
pub const MAX_PER_CONNECTION: usize = 64;
/// Shortest timer interval.
pub const MIN_TIMER_INTERVAL: Duration = Duration::from_millis(1);

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
    fn snapshot(&self) -> (u64, u64, u64, u64) {
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
    conn: Arc<Counters>,
    listener: Arc<Counters>,
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

/// Why a frame could not be queued (mirrors WIT `connections.send-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// The connection is closing.
    #[error("the connection is closing")]
    Closing,
    /// The frame is above the listener's frame limit.
    #[error("the frame is larger than the frame limit")]
    FrameTooLarge,
    /// The connection's write queue is full.
    #[error("the connection's write queue is full")]
    QueueFull,
}

/// Why an attribute could not be set (mirrors WIT `attributes.attribute-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Empty or longer than [`MAX_NAME`].
    #[error("attribute keys are 1 to {MAX_NAME} bytes")]
    BadKey,
    /// Longer than [`MAX_ATTRIBUTE_VALUE`].
    #[error("attribute values are at most {MAX_ATTRIBUTE_VALUE} bytes")]
    ValueTooLong,
    /// Already [`MAX_PER_CONNECTION`] attributes.
    #[error("a connection has at most {MAX_PER_CONNECTION} attributes")]
    TooMany,
}

/// Why a connection could not join a group (mirrors WIT `groups.group-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Empty or longer than [`MAX_NAME`].
    #[error("group names are 1 to {MAX_NAME} bytes")]
    BadName,
    /// Already in [`MAX_PER_CONNECTION`] groups.
    #[error("a connection is in at most {MAX_PER_CONNECTION} groups")]
    TooMany,
}

/// Why a timer could not be started (mirrors WIT `timers.timer-error`, minus `no-handler`,
/// which the plugin runtime decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Already [`MAX_PER_CONNECTION`] timers.
    #[error("a connection has at most {MAX_PER_CONNECTION} timers")]
    TooMany,
}

/// What a connection task receives through its inbox, in the order it was sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A frame to write.
    Frame(Bytes),
    /// A request for the task.
    Control(Control),
}

/// A request for the connection task, which owns the connection's timers and its socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// Close once everything delivered before this request is written.
    Close,
    /// Start a timer.
    StartTimer {
        /// Its id.
        timer: TimerId,
        /// First firing after this long.
        delay: Duration,
        /// Then every this long, if set.
        interval: Option<Duration>,
    },
    /// Stop a timer.
    CancelTimer(TimerId),
}

/// What a plugin can do with its listener's connections: the WIT's `connections`,
/// `attributes`, `groups`, `stats` and `timers` calls. Every method is non-blocking. This is the
/// seam a registry spanning several processes replaces; the connection task's side is
/// [`Registry`].
pub trait Hub: Send + Sync {
    /// Queues a frame for one connection.
    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError>;
    /// Queues a frame for every connection but `except`; returns how many took it.
    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32;
    /// Asks a connection to close after flushing what is queued; false if it is not open.
    fn close(&self, id: ConnectionId) -> bool;
    /// Every open connection.
    fn peers(&self) -> Vec<PeerInfo>;
    /// One open connection.
    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo>;
    /// The frame limit `send` enforces.
    fn max_frame(&self) -> usize;

    /// Sets an attribute.
    fn set_attribute(
        &self,
        id: ConnectionId,
        key: &str,
        value: String,
    ) -> Result<(), AttributeError>;
    /// Reads an attribute (also while the connection is closing).
    fn attribute(&self, id: ConnectionId, key: &str) -> Option<String>;
    /// Removes an attribute.
    fn remove_attribute(&self, id: ConnectionId, key: &str) -> Option<String>;
    /// Every attribute of a connection.
    fn attributes(&self, id: ConnectionId) -> Vec<(String, String)>;
    /// Open connections whose attribute `key` is `value`.
    fn find_attribute(&self, key: &str, value: &str) -> Vec<ConnectionId>;

    /// Adds a connection to a group.
    fn join(&self, id: ConnectionId, group: &str) -> Result<(), GroupError>;
    /// Removes a connection from a group.
    fn leave(&self, id: ConnectionId, group: &str) -> bool;
    /// A group's members.
    fn members(&self, group: &str) -> Vec<ConnectionId>;
    /// A connection's groups.
    fn groups_of(&self, id: ConnectionId) -> Vec<String>;
    /// Queues a frame for a group's members but `except`.
    fn group_send(&self, group: &str, frame: Bytes, except: Option<ConnectionId>) -> u32;

    /// Listener-wide figures.
    fn listener_stats(&self) -> ListenerStats;
    /// One open connection's figures.
    fn connection_stats(&self, id: ConnectionId) -> Option<ConnectionStats>;
    /// Every open connection's figures.
    fn all_connection_stats(&self) -> Vec<ConnectionStats>;

    /// Starts a timer on a connection.
    fn start_timer(
        &self,
        id: ConnectionId,
        delay: Duration,
        interval: Option<Duration>,
    ) -> Result<TimerId, TimerError>;
    /// Cancels a timer; false if it is not running.
    fn cancel_timer(&self, timer: TimerId) -> bool;
}

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

/// A connection's inbox: frames, timer requests and the close request, in the order sent.
///
/// A mutex-guarded `VecDeque` plus a `Notify` rather than a tokio channel: an empty deque
/// allocates nothing, while a channel allocates its first block up front — over a kilobyte for
/// every idle connection. Frames are bounded by a counter (`write_queue`) so a slow reader cannot
/// make the host buffer without limit, while a close request or a timer change is never refused
/// for lack of room (timers are capped per connection, and there is one close).
struct Inbox {
    queue: Mutex<VecDeque<Delivery>>,
    /// Wakes the connection task; a notification sent while it is busy is kept as a permit.
    ready: Notify,
    /// Frames in the queue.
    frames: AtomicUsize,
    /// Bytes of the frames in the queue.
    bytes: AtomicUsize,
    /// Bytes in the connection's write buffer not yet written (its own replies included), as
    /// last reported by the connection task: with `bytes`, what is held for this connection.
    unwritten: AtomicUsize,
    /// Bytes charged to the tenant's `queued_bytes` budget for this connection and not yet
    /// returned (queued, or taken into the write buffer and not yet written).
    charged: AtomicUsize,
    /// The tenant's budgets, where `charged` is returned.
    budgets: Arc<Budgets>,
    /// Set when the slow-consumer policy evicts the connection.
    evicted: AtomicBool,
    /// Wakes the task even while it waits for a client to read (in `flush`).
    evict: Notify,
}

impl Inbox {
    fn new(budgets: Arc<Budgets>) -> Self {
        Inbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
            budgets,
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn push(&self, delivery: Delivery) {
        lock(&self.queue).push_back(delivery);
        self.ready.notify_one();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Whatever was never written goes back to the tenant with the connection.
        self.budgets
            .of(BudgetKind::QueuedBytes)
            .release(*self.charged.get_mut());
    }
}

/// The receiving end of a connection's inbox, owned by the connection task.
pub struct Mailbox {
    inbox: Arc<Inbox>,
    /// Where the connection counts its traffic.
    pub meter: Meter,
}

impl Mailbox {
    /// The next delivery, waiting for one.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.try_next() {
                return Some(delivery);
            }
            self.inbox.ready.notified().await;
        }
    }

    /// Completes once the slow-consumer policy evicted this connection.
    pub async fn evicted(&self) {
        loop {
            let notified = self.inbox.evict.notified();
            if self.inbox.evicted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Whether the slow-consumer policy evicted this connection.
    pub fn is_evicted(&self) -> bool {
        self.inbox.evicted.load(Ordering::Acquire)
    }

    /// The next delivery if one is waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        let mut queue = lock(&self.inbox.queue);
        let delivery = queue.pop_front()?;
        if queue.is_empty() && queue.capacity() > 16 {
            // A burst should not pin its buffer for the connection's lifetime.
            queue.shrink_to(0);
        }
        drop(queue);
        if let Delivery::Frame(frame) = &delivery {
            self.inbox.frames.fetch_sub(1, Ordering::Relaxed);
            self.inbox.bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        }
        Some(delivery)
    }

    /// Reports how many bytes the connection's write buffer holds, so sends to it see the
    /// whole of what is waiting for this client.
    pub fn set_unwritten(&self, bytes: usize) {
        self.inbox.unwritten.store(bytes, Ordering::Relaxed);
    }

    /// Returns the tenant budget charged for `bytes` of queued frames that have now been
    /// written (the connection counts what it took with [`Mailbox::try_next`]).
    pub fn written(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.inbox.charged.fetch_sub(bytes, Ordering::Relaxed);
        self.inbox
            .budgets
            .of(BudgetKind::QueuedBytes)
            .release(bytes);
    }
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

    fn queue(&self, frame: Bytes, rules: &QueueRules) -> Result<(), SendError> {
        if !self.is_open() || self.close_requested.load(Ordering::Relaxed) {
            return Err(SendError::Closing);
        }
        let len = frame.len();
        let held =
            self.inbox.bytes.load(Ordering::Relaxed) + self.inbox.unwritten.load(Ordering::Relaxed);
        let over_bytes = held.saturating_add(len) > rules.bytes && held > 0;
        if self.inbox.frames.fetch_add(1, Ordering::Relaxed) >= rules.limit || over_bytes {
            self.inbox.frames.fetch_sub(1, Ordering::Relaxed);
            match rules.policy {
                SlowConsumer::Drop => rules.dropped.inc(),
                SlowConsumer::Close => {
                    if !self.inbox.evicted.swap(true, Ordering::AcqRel) {
                        rules.closed.inc();
                        self.close_requested.store(true, Ordering::Relaxed);
                        self.inbox.evict.notify_one();
                        self.inbox.ready.notify_one();
                    }
                }
            }
            return Err(SendError::QueueFull);
        }
        // The tenant's total: a full budget refuses this frame without blaming this reader.
        if !rules.budgets.of(BudgetKind::QueuedBytes).try_charge(len) {
            self.inbox.frames.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::QueueFull);
        }
        self.inbox.charged.fetch_add(len, Ordering::Relaxed);
        self.inbox.bytes.fetch_add(len, Ordering::Relaxed);
        self.inbox.push(Delivery::Frame(frame));
        Ok(())
    }

    fn control(&self, control: Control) {
        self.inbox.push(Delivery::Control(control));
    }

    fn stats(&self) -> ConnectionStats {
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

/// A listener's write-queue limit and slow-consumer policy.
struct QueueRules {
    /// Frames a connection may have queued but not yet written; beyond it sends fail with
    /// `QueueFull` so a client that does not read cannot make the host buffer without bound.
    limit: usize,
    /// Bytes a connection may have waiting (queued frames and unwritten replies); a frame that
    /// would pass it is refused like one past `limit` (a lone frame is always taken, so one
    /// frame up to `max_frame` can always reach an idle connection).
    bytes: usize,
    /// The tenant's budgets (`queued_bytes` over every connection).
    budgets: Arc<Budgets>,
    /// What a full write queue does.
    policy: SlowConsumer,
    /// Frames dropped under [`SlowConsumer::Drop`].
    dropped: IntCounter,
    /// Connections closed under [`SlowConsumer::Close`].
    closed: IntCounter,
}

/// The in-process [`Hub`].
pub struct LocalHub {
    /// Every registered connection (open or closing). Read-mostly.
    entries: RwLock<HashMap<ConnectionId, Entry>>,
    /// Group name → members. Kept apart from `entries` so group sends do not scan everyone.
    groups: RwLock<HashMap<String, HashSet<ConnectionId>>>,
    /// Timer → its connection, so `cancel` can find the task that owns the timer.
    timer_owners: Mutex<HashMap<TimerId, ConnectionId>>,
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

impl Hub for LocalHub {
    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > self.max_frame {
            return Err(SendError::FrameTooLarge);
        }
        let entries = self.read();
        let entry = entries.get(&to).ok_or(SendError::UnknownConnection)?;
        entry.queue(frame, &self.full)
    }

    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.max_frame {
            return 0;
        }
        let entries = self.read();
        let delivered = entries
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, entry)| entry.queue(frame.clone(), &self.full).is_ok())
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    fn close(&self, id: ConnectionId) -> bool {
        match self.read().get(&id) {
            Some(entry) if entry.is_open() => {
                if !entry.close_requested.swap(true, Ordering::Relaxed) {
                    entry.control(Control::Close);
                }
                true
            }
            _ => false,
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.read()
            .values()
            .filter(|e| e.is_open())
            .map(|e| e.peer.clone())
            .collect()
    }

    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo> {
        self.read()
            .get(&id)
            .filter(|e| e.is_open())
            .map(|e| e.peer.clone())
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn set_attribute(
        &self,
        id: ConnectionId,
        key: &str,
        value: String,
    ) -> Result<(), AttributeError> {
        if !valid_name(key) {
            return Err(AttributeError::BadKey);
        }
        if value.len() > MAX_ATTRIBUTE_VALUE {
            return Err(AttributeError::ValueTooLong);
        }
        let entries = self.read();
        let entry = entries
            .get(&id)
            .filter(|e| e.is_open())
            .ok_or(AttributeError::UnknownConnection)?;
        let mut attributes = lock(&entry.attributes);
        let old = attributes.get(key).map(|v| key.len() + v.len());
        if attributes.len() >= MAX_PER_CONNECTION && old.is_none() {
            return Err(AttributeError::TooMany);
        }
        let new = key.len() + value.len();
        let old = old.unwrap_or(0);
        let budget = self.budget(BudgetKind::AttributeBytes);
        if new > old {
            if !budget.try_charge(new - old) {
                return Err(AttributeError::TooMany);
            }
        } else {
            budget.release(old - new);
        }
        attributes.insert(key.to_string(), value);
        Ok(())
    }

    fn attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        let entries = self.read();
        let entry = entries.get(&id)?;
        lock(&entry.attributes).get(key).cloned()
    }

    fn remove_attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        let entries = self.read();
        let entry = entries.get(&id)?;
        let removed = lock(&entry.attributes).remove(key)?;
        self.budget(BudgetKind::AttributeBytes)
            .release(key.len() + removed.len());
        Some(removed)
    }

    fn attributes(&self, id: ConnectionId) -> Vec<(String, String)> {
        let entries = self.read();
        entries.get(&id).map_or_else(Vec::new, |entry| {
            lock(&entry.attributes)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn find_attribute(&self, key: &str, value: &str) -> Vec<ConnectionId> {
        self.read()
            .iter()
            .filter(|(_, e)| e.is_open())
            .filter(|(_, e)| lock(&e.attributes).get(key).is_some_and(|v| v == value))
            .map(|(id, _)| *id)
            .collect()
    }

    fn join(&self, id: ConnectionId, group: &str) -> Result<(), GroupError> {
        if !valid_name(group) {
            return Err(GroupError::BadName);
        }
        {
            let entries = self.read();
            let entry = entries
                .get(&id)
                .filter(|e| e.is_open())
                .ok_or(GroupError::UnknownConnection)?;
            let mut mine = lock(&entry.groups);
            if !mine.contains(group) {
                if mine.len() >= MAX_PER_CONNECTION
                    || !self.budget(BudgetKind::GroupBytes).try_charge(group.len())
                {
                    return Err(GroupError::TooMany);
                }
                mine.insert(group.to_string());
            }
        }
        self.groups_write()
            .entry(group.to_string())
            .or_default()
            .insert(id);
        Ok(())
    }

    fn leave(&self, id: ConnectionId, group: &str) -> bool {
        let was_member = {
            let entries = self.read();
            entries
                .get(&id)
                .is_some_and(|e| lock(&e.groups).remove(group))
        };
        if was_member {
            let names = HashSet::from([group.to_string()]);
            self.remove_from_groups(id, &names);
            self.release_groups(&names);
        }
        was_member
    }

    fn members(&self, group: &str) -> Vec<ConnectionId> {
        self.groups_read()
            .get(group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    fn groups_of(&self, id: ConnectionId) -> Vec<String> {
        self.read()
            .get(&id)
            .map(|e| lock(&e.groups).iter().cloned().collect())
            .unwrap_or_default()
    }

    fn group_send(&self, group: &str, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.max_frame {
            return 0;
        }
        let members = self.members(group);
        let entries = self.read();
        let delivered = members
            .iter()
            .filter(|id| Some(**id) != except)
            .filter_map(|id| entries.get(id))
            .filter(|entry| entry.queue(frame.clone(), &self.full).is_ok())
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

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

    fn start_timer(
        &self,
        id: ConnectionId,
        delay: Duration,
        interval: Option<Duration>,
    ) -> Result<TimerId, TimerError> {
        let entries = self.read();
        let entry = entries
            .get(&id)
            .filter(|e| e.is_open())
            .ok_or(TimerError::UnknownConnection)?;
        let mut timers = lock(&entry.timers);
        if timers.len() >= MAX_PER_CONNECTION || !self.budget(BudgetKind::Timers).try_charge(1) {
            return Err(TimerError::TooMany);
        }
        let timer = NEXT_TIMER.fetch_add(1, Ordering::Relaxed);
        let interval = interval.map(|i| i.max(MIN_TIMER_INTERVAL));
        entry.control(Control::StartTimer {
            timer,
            delay,
            interval,
        });
        timers.insert(timer);
        lock(&self.timer_owners).insert(timer, id);
        Ok(timer)
    }

    fn cancel_timer(&self, timer: TimerId) -> bool {
        let Some(owner) = lock(&self.timer_owners).remove(&timer) else {
            return false;
        };
        let entries = self.read();
        let Some(entry) = entries.get(&owner) else {
            return false;
        };
        if lock(&entry.timers).remove(&timer) {
            self.budget(BudgetKind::Timers).release(1);
        }
        entry.control(Control::CancelTimer(timer));
        true
    }
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
mod tests {
    use super::*;

    fn peer(id: ConnectionId) -> PeerInfo {
        PeerInfo {
            id,
            remote_addr: "127.0.0.1:1".into(),
            local_addr: "127.0.0.1:2".into(),
            listener: Arc::from("test"),
            connected_at: SystemTime::now(),
            tls: None,
        }
    }

    #[test]
    fn send_reports_each_failure_kind() {
        let hub = LocalHub::new(1, 4);
        let mut mb = hub.register(peer(1));
        assert_eq!(
            hub.send(2, Bytes::from_static(b"x")),
            Err(SendError::UnknownConnection)
        );
        assert_eq!(
            hub.send(1, Bytes::from_static(b"12345")),
            Err(SendError::FrameTooLarge)
        );
        assert_eq!(hub.send(1, Bytes::from_static(b"a")), Ok(()));
        assert_eq!(
            hub.send(1, Bytes::from_static(b"b")),
            Err(SendError::QueueFull)
        );
        assert_eq!(
            mb.try_next(),
            Some(Delivery::Frame(Bytes::from_static(b"a")))
        );
        assert_eq!(
            hub.send(1, Bytes::from_static(b"b")),
            Ok(()),
            "taking a frame frees its slot"
        );
        assert!(hub.close(1));
        assert_eq!(
            mb.try_next(),
            Some(Delivery::Frame(Bytes::from_static(b"b")))
        );
        assert_eq!(mb.try_next(), Some(Delivery::Control(Control::Close)));
        assert_eq!(
            hub.send(1, Bytes::from_static(b"c")),
            Err(SendError::Closing)
        );
        hub.unregister(1);
        assert!(!hub.close(1));
    }

    #[test]
    fn broadcast_skips_the_sender_and_full_queues() {
        let hub = LocalHub::new(1, 64);
        let _a = hub.register(peer(1));
        let _b = hub.register(peer(2));
        let _c = hub.register(peer(3));
        hub.send(3, Bytes::from_static(b"fill")).unwrap();
        assert_eq!(hub.broadcast(Bytes::from_static(b"hi"), Some(1)), 1);
        assert_eq!(hub.peers().len(), 3);
    }

    #[test]
    fn attributes_are_validated_found_and_readable_while_closing() {
        let hub = LocalHub::new(4, 64);
        let _a = hub.register(peer(1));
        let _b = hub.register(peer(2));
        assert_eq!(
            hub.set_attribute(1, "", "x".into()),
            Err(AttributeError::BadKey)
        );
        assert_eq!(
            hub.set_attribute(1, "k", "v".repeat(MAX_ATTRIBUTE_VALUE + 1)),
            Err(AttributeError::ValueTooLong)
        );
        assert_eq!(
            hub.set_attribute(9, "k", "v".into()),
            Err(AttributeError::UnknownConnection)
        );
        for i in 0..MAX_PER_CONNECTION {
            hub.set_attribute(2, &format!("k{i}"), "v".into()).unwrap();
        }
        assert_eq!(
            hub.set_attribute(2, "one-more", "v".into()),
            Err(AttributeError::TooMany)
        );
        hub.set_attribute(1, "name", "ann".into()).unwrap();
        assert_eq!(hub.find_attribute("name", "ann"), vec![1]);
        hub.begin_close(1);
        assert_eq!(hub.attribute(1, "name").as_deref(), Some("ann"));
        assert!(
            hub.find_attribute("name", "ann").is_empty(),
            "closing connections are not found"
        );
        hub.unregister(1);
        assert_eq!(hub.attribute(1, "name"), None);
    }

    #[test]
    fn groups_send_to_members_and_forget_closing_connections() {
        let hub = LocalHub::new(4, 64);
        let mut a = hub.register(peer(1));
        let mut b = hub.register(peer(2));
        let _c = hub.register(peer(3));
        hub.join(1, "room").unwrap();
        hub.join(2, "room").unwrap();
        assert_eq!(hub.join(3, ""), Err(GroupError::BadName));
        assert_eq!(
            hub.group_send("room", Bytes::from_static(b"hi"), Some(1)),
            1
        );
        assert_eq!(
            b.try_next(),
            Some(Delivery::Frame(Bytes::from_static(b"hi")))
        );
        assert_eq!(a.try_next(), None);
        hub.begin_close(2);
        assert_eq!(hub.members("room"), vec![1]);
        assert!(hub.leave(1, "room"));
        assert!(hub.members("room").is_empty());
        assert!(!hub.leave(1, "room"));
    }

    #[test]
    fn timers_are_capped_routed_and_forgotten() {
        let hub = LocalHub::new(4, 64);
        let mut a = hub.register(peer(1));
        let t = hub.start_timer(1, Duration::from_millis(5), None).unwrap();
        assert_eq!(
            a.try_next().unwrap(),
            Delivery::Control(Control::StartTimer {
                timer: t,
                delay: Duration::from_millis(5),
                interval: None
            })
        );
        assert!(hub.cancel_timer(t));
        assert_eq!(
            a.try_next().unwrap(),
            Delivery::Control(Control::CancelTimer(t))
        );
        assert!(!hub.cancel_timer(t));
        for _ in 0..MAX_PER_CONNECTION {
            hub.start_timer(1, Duration::from_secs(1), Some(Duration::ZERO))
                .unwrap();
        }
        assert_eq!(
            hub.start_timer(1, Duration::from_secs(1), None),
            Err(TimerError::TooMany)
        );
        assert_eq!(
            hub.start_timer(7, Duration::from_secs(1), None),
            Err(TimerError::UnknownConnection)
        );
        hub.unregister(1);
        assert!(lock(&hub.timer_owners).is_empty());
    }

    #[test]
    fn stats_count_traffic_per_connection_and_listener() {
        let hub = LocalHub::new(4, 64);
        let a = hub.register(peer(1));
        let _b = hub.register(peer(2));
        let mut tally = Tally {
            frames_in: 1,
            bytes_in: 10,
            frames_out: 1,
            bytes_out: 7,
        };
        a.meter.record(&mut tally);
        assert_eq!(tally.frames_in, 0, "recording resets the tally");
        let l = hub.listener_stats();
        assert_eq!(
            (
                l.connected,
                l.accepted,
                l.frames_in,
                l.bytes_in,
                l.frames_out,
                l.bytes_out
            ),
            (2, 2, 1, 10, 1, 7)
        );
        let c = hub.connection_stats(1).unwrap();
        assert_eq!(
            (c.frames_in, c.bytes_in, c.frames_out, c.bytes_out),
            (1, 10, 1, 7)
        );
        assert_eq!(hub.connection_stats(2).unwrap().frames_in, 0);
        assert_eq!(hub.all_connection_stats().len(), 2);
    }
}
