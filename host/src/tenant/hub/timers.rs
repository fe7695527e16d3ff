//! The WIT `timers` side of the registry: timers are started and stopped by the connection
//! task that owns them (through its mailbox); the registry hands out ids, caps them per
//! connection and charges the tenant's `timers` budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::lock;
use crate::tenant::budget::BudgetKind;

use super::mailbox::Control;
use super::{ConnectionId, LocalHub, MAX_PER_CONNECTION};

/// Identifies a timer; unique for the process lifetime.
pub type TimerId = u64;

static NEXT_TIMER: AtomicU64 = AtomicU64::new(1);

/// Shortest timer interval.
pub const MIN_TIMER_INTERVAL: Duration = Duration::from_millis(1);

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

/// Timers on connections (WIT `timers`).
pub trait Timers: Send + Sync {
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

impl Timers for LocalHub {
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
