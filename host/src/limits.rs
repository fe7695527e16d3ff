//! Every limit a listener (a tenant) runs under, as pier.toml's `[listener.limits]` and the
//! command line set them, with their defaults: connections, timeouts, write queues, the
//! tenant's byte budgets, its CPU share and its plugin instances' memory and deadline.
//!
//! Plain data at the bottom of the layers: the config produces it, and admission, the hub, the
//! budgets, the runtime and the connection read it, so none of them depends on another for it.

use std::time::Duration;

/// Defaults for a listener's limits.
pub const DEFAULT_WRITE_QUEUE: usize = 1024;

/// Connection-level limits of one listener (pier.toml `[listener.limits]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most connections open at once; beyond it new clients are accepted and closed at once.
    pub max_connections: usize,
    /// Most connections open at once from one client IP address.
    pub max_connections_per_address: Option<usize>,
    /// Most new connections per second from one client IP address (a token bucket with a
    /// burst of one second's worth).
    pub new_connections_per_second: Option<u32>,
    /// Close a connection that sent nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose frame is not complete this long after its first byte arrived
    /// (the slowloris defence: a trickle of bytes does not count as activity for a frame that
    /// never ends).
    pub frame_timeout: Option<Duration>,
    /// Frames other connections may queue for one connection before the slow-consumer policy
    /// applies.
    pub write_queue: usize,
    /// Bytes that may wait for one connection (its inbox and unwritten replies) before the
    /// slow-consumer policy applies.
    pub write_queue_bytes: usize,
    /// What the tenant may make the host hold over all its connections.
    pub budgets: BudgetLimits,
    /// The part of a worker's call time the tenant may use per window while another tenant on
    /// the worker wants it (0 < share ≤ 1; see `runtime::fair`).
    pub cpu_share: f64,
    /// What happens when a connection's write queue is full.
    pub slow_consumer: SlowConsumer,
    /// Memory and call deadline of each plugin instance; `None`: the runtime's defaults.
    pub instance: Option<InstanceLimits>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_address: Some(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
            new_connections_per_second: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
            write_queue: DEFAULT_WRITE_QUEUE,
            write_queue_bytes: DEFAULT_WRITE_QUEUE_BYTES,
            budgets: BudgetLimits::default(),
            cpu_share: DEFAULT_CPU_SHARE,
            slow_consumer: SlowConsumer::Drop,
            instance: None,
        }
    }
}

/// Default `idle_timeout`: an Internet-facing port should not keep silent clients forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `frame_timeout`.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `max_connections_per_address`: one address cannot take every slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1000;
/// Default `cpu_share`: the same quarter of a worker that a tenant's long calls get while
/// others have work (`runtime::fair`).
pub const DEFAULT_CPU_SHARE: f64 = 0.25;
/// Default `write_queue_bytes`.
pub const DEFAULT_WRITE_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// What happens when a connection's write queue is full (pier.toml `limits.slow_consumer`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Refuse the frame (`send` fails with `queue-full`, a broadcast skips the connection); the
    /// connection stays open.
    #[default]
    Drop,
    /// Close the connection with `slow-consumer`, dropping what it had not read.
    Close,
}

impl std::str::FromStr for SlowConsumer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(SlowConsumer::Drop),
            "close" => Ok(SlowConsumer::Close),
            other => Err(format!(
                "`{other}` is not a slow-consumer policy (close or drop)"
            )),
        }
    }
}

/// The limits of a tenant's budgets (pier.toml `[listener.limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Bytes queued for the tenant's connections and not yet written (inboxes and write
    /// buffers): `queued_bytes`.
    pub queued_bytes: usize,
    /// Bytes of incoming frames not yet complete, over all connections: `partial_frame_bytes`.
    pub partial_frame_bytes: usize,
    /// Bytes of attribute keys and values: `attribute_bytes`.
    pub attribute_bytes: usize,
    /// Bytes of group names held by memberships (a name counts once per member):
    /// `group_bytes`.
    pub group_bytes: usize,
    /// Timers running: `timers`.
    pub timers: usize,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            queued_bytes: 256 * 1024 * 1024,
            partial_frame_bytes: 64 * 1024 * 1024,
            attribute_bytes: 64 * 1024 * 1024,
            group_bytes: 16 * 1024 * 1024,
            timers: 100_000,
        }
    }
}

/// Per-listener sandbox limits for each plugin instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Largest linear memory an instance may grow to (at most the runtime's pool limit).
    pub memory: usize,
    /// Longest one guest call may run.
    pub call_deadline: Duration,
}
