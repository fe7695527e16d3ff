//! What can go wrong in a guest call, and the per-listener fault counts. Below the instance
//! code (which produces faults) and the listener context (which holds the counts), so neither
//! has to depend on the other.

/// What went wrong in a guest call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The guest trapped (unreachable, out-of-bounds access, a panic, ...).
    Trap = 0,
    /// The call ran past the call deadline.
    Deadline,
    /// The guest tried to grow memory past its limit.
    Memory,
    /// The call ran past its deadline while the host was refusing its `send`s (queue full):
    /// a guest flooding a connection.
    SendFlood,
    /// No instance could be created (instantiation itself trapped or the pool is exhausted).
    Instantiate,
    /// A reply larger than the listener's limit: never written, the connection is closed.
    ReplyTooLarge,
}

impl FaultKind {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Every kind's name, in [`FaultKind::ALL`] order: the `kind` label of
    /// `pier_plugin_faults_total`.
    pub const NAMES: &'static [&'static str] = &[
        "trap",
        "deadline",
        "memory",
        "send-flood",
        "instantiate",
        "reply-too-large",
    ];

    /// Every kind, in the order [`FaultCounts`] keeps them.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Trap,
        FaultKind::Deadline,
        FaultKind::Memory,
        FaultKind::SendFlood,
        FaultKind::Instantiate,
        FaultKind::ReplyTooLarge,
    ];
}

/// Faults of one listener's plugin since the listener started, by kind, over every worker.
#[derive(Debug, Default)]
pub struct FaultCounts([std::sync::atomic::AtomicU64; FaultKind::ALL.len()]);

impl FaultCounts {
    /// Counts one fault; returns the listener's total so far.
    pub fn record(&self, kind: FaultKind) -> u64 {
        use std::sync::atomic::Ordering;
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.total()
    }

    /// Faults of `kind` so far.
    pub fn of(&self, kind: FaultKind) -> u64 {
        self.0[kind as usize].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Faults of every kind so far.
    pub fn total(&self) -> u64 {
        FaultKind::ALL.iter().map(|&k| self.of(k)).sum()
    }
}
