//! Tenant budgets: what one listener's connections and plugin may make the host hold, in bytes
//! (or, where every unit has the same size, in units), shared by all of the tenant's connections
//! on every worker.
//!
//! The per-connection caps in `hub` (64 attributes, 64 KiB values, a write queue) bound one
//! connection; these bound the sum, so a tenant with thousands of connections cannot turn
//! per-connection allowances into gigabytes. A charge that would pass a budget is refused and
//! counted in `pier_budget_refusals_total{listener, budget}`; the operation that asked gets the
//! WIT's existing error for it (`queue-full`, `too-many`), a partial frame closes its connection.
//! Charges are returned when the bytes are gone (written, removed, the connection closed), so
//! a budget measures what is held now.

use crate::limits::BudgetLimits;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;

/// One budget: a limit and what is charged against it now.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    refused: IntCounter,
}

impl Budget {
    /// A budget of `limit` whose refusals count in `refused`.
    pub fn new(limit: usize, refused: IntCounter) -> Self {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            refused,
        }
    }

    /// Charges `n`; false (counted, nothing charged) if that would pass the limit.
    pub fn try_charge(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.limit {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.refused.inc();
            return false;
        }
        true
    }

    /// Returns `n` charged earlier.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// What is charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Refusals so far.
    pub fn refusals(&self) -> u64 {
        self.refused.get()
    }
}

/// Which budget; the `budget` label of `pier_budget_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKind {
    /// [`BudgetLimits::queued_bytes`].
    QueuedBytes,
    /// [`BudgetLimits::partial_frame_bytes`].
    PartialFrameBytes,
    /// [`BudgetLimits::attribute_bytes`].
    AttributeBytes,
    /// [`BudgetLimits::group_bytes`].
    GroupBytes,
    /// [`BudgetLimits::timers`].
    Timers,
}

impl BudgetKind {
    /// Every kind, in [`Budgets`] order.
    pub const ALL: [BudgetKind; 5] = [
        BudgetKind::QueuedBytes,
        BudgetKind::PartialFrameBytes,
        BudgetKind::AttributeBytes,
        BudgetKind::GroupBytes,
        BudgetKind::Timers,
    ];

    /// Every kind's name, in [`BudgetKind::ALL`] order.
    pub const NAMES: &'static [&'static str] = &[
        "queued_bytes",
        "partial_frame_bytes",
        "attribute_bytes",
        "group_bytes",
        "timers",
    ];

    /// The config key and metric label.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One tenant's budgets.
#[derive(Debug)]
pub struct Budgets {
    budgets: [Budget; 5],
}

impl Budgets {
    /// Budgets with `limits`, refusals counted in `refused` (one counter per kind, in
    /// [`BudgetKind::ALL`] order).
    pub fn new(limits: BudgetLimits, refused: [IntCounter; 5]) -> Self {
        let [queued, partial, attributes, groups, timers] = refused;
        Budgets {
            budgets: [
                Budget::new(limits.queued_bytes, queued),
                Budget::new(limits.partial_frame_bytes, partial),
                Budget::new(limits.attribute_bytes, attributes),
                Budget::new(limits.group_bytes, groups),
                Budget::new(limits.timers, timers),
            ],
        }
    }

    /// Budgets that are never exported (tests, embedders' scratch listeners).
    pub fn detached(limits: BudgetLimits) -> Self {
        Self::new(
            limits,
            std::array::from_fn(|_| crate::ops::metrics::detached_counter()),
        )
    }

    /// The budget of `kind`.
    pub fn of(&self, kind: BudgetKind) -> &Budget {
        &self.budgets[kind as usize]
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Self::detached(BudgetLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_past_the_limit_are_refused_and_counted() {
        let budget = Budget::new(10, crate::ops::metrics::detached_counter());
        assert!(budget.try_charge(6));
        assert!(!budget.try_charge(5));
        assert_eq!(budget.used(), 6, "a refused charge leaves nothing behind");
        assert_eq!(budget.refusals(), 1);
        assert!(budget.try_charge(4));
        budget.release(6);
        assert!(budget.try_charge(6));
        assert_eq!(budget.used(), 10);
        assert!(budget.try_charge(0), "nothing always fits");
    }
}
