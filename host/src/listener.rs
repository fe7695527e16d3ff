//! What a listener serves: its name, framing and limits, plugin slot and connection registry.
//! The accept loop lives in [`crate::server`]; this is the shared description every connection
//! task of the listener reads.
//!
//! A listener is one tenant: its registry, groups and broadcasts reach only its own connections.
//! TLS listeners may route some SNI names to other plugins; each route is a listener of its own
//! (own registry, own plugin slot) that shares the parent's socket and limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::budget::Budgets;
use crate::framing::Framing;
use crate::hub::{Hub, LocalHub, SlowConsumer};
use crate::metrics::ListenerMetrics;
use crate::runtime::host::ListenerContext;
use crate::runtime::{InstanceLimits, LoadedPlugin, PluginConfig, PluginSlot};
use crate::tls::TlsListener;

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
    pub budgets: crate::budget::BudgetLimits,
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
            budgets: crate::budget::BudgetLimits::default(),
            cpu_share: crate::runtime::fair::DEFAULT_CPU_SHARE,
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
/// Default `write_queue_bytes`.
pub const DEFAULT_WRITE_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// Bits of a connection id that number the connections of one tenant (2^40, a trillion, per
/// listener instance); the bits above hold the listener's id.
pub const CONNECTION_SEQ_BITS: u32 = 40;
const CONNECTION_SEQ_MASK: u64 = (1 << CONNECTION_SEQ_BITS) - 1;

/// How to build a listener.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Unique name, on every log line.
    pub name: String,
    /// How frames are cut.
    pub framing: Framing,
    /// The largest frame a client may send.
    pub max_frame: usize,
    /// Connection and instance limits.
    pub limits: Limits,
    /// The operator's `plugin_config`.
    pub plugin_config: PluginConfig,
    /// The upstreams the plugin may use.
    pub upstreams: crate::upstream::Grants,
}

/// Everything connections of one listener share.
pub struct ListenerShared {
    /// Process-unique id; workers key their plugin instances by it.
    pub id: u64,
    /// The listener's name, on every log line and in the WIT `peer` record.
    pub name: Arc<str>,
    /// How frames are cut.
    pub framing: Framing,
    /// The largest frame a client may send.
    pub max_frame: usize,
    /// The plugin version serving now; reloads swap it.
    pub slot: Arc<PluginSlot>,
    /// Connection and instance limits.
    pub limits: Limits,
    /// Prometheus handles of this listener.
    pub metrics: Arc<ListenerMetrics>,
    /// What the tenant may make the host hold; shared with its registry.
    pub budgets: Arc<Budgets>,
    /// The registry, also reachable from the plugin through `ctx`.
    pub hub: Arc<dyn Hub>,
    /// What plugin instances of this listener are handed.
    pub ctx: Arc<ListenerContext>,
    /// TLS settings, on TLS listeners.
    pub tls: Option<Arc<TlsListener>>,
    /// SNI names (lower case) routed to other plugins, each its own tenant.
    pub routes: Vec<(String, Arc<ListenerShared>)>,
    /// Cancelled to drain this listener's connections (shutdown, or the listener was removed).
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passes.
    pub force: CancellationToken,
    /// Set once the listener stopped accepting; workers then free its instances when its last
    /// connection ends.
    retired: Arc<AtomicBool>,
    /// The sequence number of this tenant's next connection.
    next_connection: AtomicU64,
}

impl ListenerShared {
    /// Describes a plain-TCP listener with an in-process registry and default limits.
    pub fn new(
        name: &str,
        framing: Framing,
        max_frame: usize,
        write_queue: usize,
        plugin: Arc<LoadedPlugin>,
    ) -> Arc<Self> {
        Self::with_tls(name, framing, max_frame, write_queue, plugin, None)
    }

    /// Describes a listener with default limits, with TLS when `tls` is given.
    pub fn with_tls(
        name: &str,
        framing: Framing,
        max_frame: usize,
        write_queue: usize,
        plugin: Arc<LoadedPlugin>,
        tls: Option<Arc<TlsListener>>,
    ) -> Arc<Self> {
        let settings = ListenerSettings {
            name: name.to_string(),
            framing,
            max_frame,
            limits: Limits {
                write_queue,
                ..Limits::default()
            },
            plugin_config: PluginConfig::new(),
            upstreams: Vec::new(),
        };
        Self::build(settings, plugin, tls, Vec::new())
    }

    /// Describes a listener from its settings; `routes` are the SNI-routed tenants.
    pub fn build(
        settings: ListenerSettings,
        plugin: Arc<LoadedPlugin>,
        tls: Option<Arc<TlsListener>>,
        routes: Vec<(String, Arc<ListenerShared>)>,
    ) -> Arc<Self> {
        let name: Arc<str> = Arc::from(settings.name.as_str());
        let limits = settings.limits;
        let metrics = ListenerMetrics::new(&name);
        let budgets = Arc::new(Budgets::new(limits.budgets, metrics.budget_refused.clone()));
        let hub: Arc<dyn Hub> = Arc::new(
            LocalHub::with_policy(limits.write_queue, settings.max_frame, limits.slow_consumer)
                .counting_full_queues(metrics.queue_dropped.clone(), metrics.queue_closed.clone())
                .with_budgets(limits.write_queue_bytes, budgets.clone()),
        );
        let ctx = Arc::new(ListenerContext {
            name: name.clone(),
            hub: hub.clone(),
            faults: Default::default(),
            metrics: metrics.clone(),
            upstreams: crate::upstream::GrantSlot::new(settings.upstreams),
            output: Arc::new(crate::runtime::output::OutputRate::new(
                crate::runtime::output::DEFAULT_RATE,
                crate::runtime::output::DEFAULT_BURST,
                metrics.output_dropped.clone(),
            )),
        });
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(ListenerShared {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name,
            framing: settings.framing,
            max_frame: settings.max_frame,
            slot: Arc::new(PluginSlot::new(
                plugin,
                settings.plugin_config,
                metrics.clone(),
            )),
            metrics,
            limits,
            budgets,
            hub,
            ctx,
            tls,
            routes: routes
                .into_iter()
                .map(|(n, l)| (n.to_ascii_lowercase(), l))
                .collect(),
            drain: CancellationToken::new(),
            force: CancellationToken::new(),
            retired: Arc::new(AtomicBool::new(false)),
            next_connection: AtomicU64::new(1),
        })
    }

    /// The id of this tenant's next connection: the listener's process-unique id in the high
    /// bits, the tenant's own sequence number in the low [`CONNECTION_SEQ_BITS`]. Unique for the
    /// process and never reused (listener ids are never reused either), never 0, and a plugin
    /// that counts its own ids learns nothing about how busy other tenants are — with one
    /// process-wide counter, the gaps between its ids were other tenants' connections.
    pub fn next_connection_id(&self) -> crate::hub::ConnectionId {
        let seq = self.next_connection.fetch_add(1, Ordering::Relaxed) & CONNECTION_SEQ_MASK;
        (self.id << CONNECTION_SEQ_BITS) | seq
    }

    /// The tenant serving a TLS client that asked for `server_name`: a route's listener, or
    /// this one.
    pub fn route(self: &Arc<Self>, server_name: Option<&str>) -> Arc<ListenerShared> {
        server_name
            .and_then(|name| {
                self.routes
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, l)| l.clone())
            })
            .unwrap_or_else(|| self.clone())
    }

    /// Marks the listener (and its routes) as no longer accepting.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        let current = self.slot.current();
        self.metrics
            .retire_version(&current.plugin.name, &current.plugin.version);
        for (_, route) in &self.routes {
            route.retire();
        }
    }

    /// The flag [`ListenerShared::retire`] sets, for holders that must not keep the listener
    /// alive.
    pub fn retired_flag(&self) -> Arc<AtomicBool> {
        self.retired.clone()
    }

    /// Whether the listener stopped accepting.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Starts draining this listener's connections (and its routes').
    pub fn start_drain(&self) {
        self.drain.cancel();
        for (_, route) in &self.routes {
            route.start_drain();
        }
    }

    /// Drops whatever this listener's connections still owe.
    pub fn force_close(&self) {
        self.force.cancel();
        for (_, route) in &self.routes {
            route.force_close();
        }
    }
}
