//! Each connection's inbox — frames, timer requests and the close request, in the order sent —
//! and the rules that bound it (frames, bytes, the tenant's `queued_bytes` budget, the
//! slow-consumer policy). The registry holds the sending side; the connection task owns the
//! [`Mailbox`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::limits::SlowConsumer;
use crate::sys::lock;
use crate::tenant::budget::{BudgetKind, Budgets};

use super::counters::Meter;
use super::{Entry, SendError, TimerId};

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

/// A connection's inbox: frames, timer requests and the close request, in the order sent.
///
/// A mutex-guarded `VecDeque` plus a `Notify` rather than a tokio channel: an empty deque
/// allocates nothing, while a channel allocates its first block up front — over a kilobyte for
/// every idle connection. Frames are bounded by a counter (`write_queue`) so a slow reader cannot
/// make the host buffer without limit, while a close request or a timer change is never refused
/// for lack of room (timers are capped per connection, and there is one close).
pub(super) struct Inbox {
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
    pub(super) fn new(budgets: Arc<Budgets>) -> Self {
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
    pub(super) inbox: Arc<Inbox>,
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

/// A listener's write-queue limit and slow-consumer policy.
pub(super) struct QueueRules {
    /// Frames a connection may have queued but not yet written; beyond it sends fail with
    /// `QueueFull` so a client that does not read cannot make the host buffer without bound.
    pub(super) limit: usize,
    /// Bytes a connection may have waiting (queued frames and unwritten replies); a frame that
    /// would pass it is refused like one past `limit` (a lone frame is always taken, so one
    /// frame up to `max_frame` can always reach an idle connection).
    pub(super) bytes: usize,
    /// The tenant's budgets (`queued_bytes` over every connection).
    pub(super) budgets: Arc<Budgets>,
    /// What a full write queue does.
    pub(super) policy: SlowConsumer,
    /// Frames dropped under [`SlowConsumer::Drop`].
    pub(super) dropped: IntCounter,
    /// Connections closed under [`SlowConsumer::Close`].
    pub(super) closed: IntCounter,
}

impl Entry {
    pub(super) fn queue(&self, frame: Bytes, rules: &QueueRules) -> Result<(), SendError> {
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

    pub(super) fn control(&self, control: Control) {
        self.inbox.push(Delivery::Control(control));
    }
}
