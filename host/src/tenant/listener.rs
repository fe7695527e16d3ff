//! What a listener serves: its name, framing and limits, plugin slot and connection registry.
//! The accept loop lives in [`crate::net::server`]; this is the shared description every connection
//! task of the listener reads.
//!
//! A listener is one tenant: its registry, groups and broadcasts reach only its own connections.
//! TLS listeners may route some SNI names to other plugins; each route is a listener of its own
//! (own registry, own plugin slot) that shares the parent's socket and limits.
//!
//! A tenant may be reached through several [`Door`]s — addresses with their own framing, TLS and
//! WebSocket settings (pier.toml `[[listener.door]]`) — that all feed the one registry, so a
//! broadcast reaches line clients and browsers alike. The listener's own address is its first
//! door, [`ListenerShared::door`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::limits::Limits;
use crate::net::framing::{DEFAULT_MAX_FRAME, Framing};
use crate::net::proxy::ProxySettings;
use crate::net::tls::TlsListener;
use crate::net::upgrade::WebSocketSettings;
use crate::ops::metrics::ListenerMetrics;
use crate::runtime::context::ListenerContext;
use crate::runtime::{LoadedPlugin, PluginConfig, PluginSlot};
use crate::tenant::budget::Budgets;
use crate::tenant::hub::{LocalHub, Registry};

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
    /// The upgrade settings, when `framing` is WebSocket.
    pub websocket: Option<WebSocketSettings>,
    /// The PROXY protocol on the listener's own address.
    pub proxy: Option<ProxySettings>,
    /// The cluster whose same-named listeners this one forms a tenant with, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One way into a tenant: how the connections accepted on one socket are framed and secured.
pub struct Door {
    /// How frames are cut on this door.
    pub framing: Framing,
    /// TLS on this door.
    pub tls: Option<Arc<TlsListener>>,
    /// The upgrade settings of a WebSocket door (the defaults when the framing is WebSocket and
    /// none were given).
    pub websocket: Option<Arc<WebSocketSettings>>,
    /// The PROXY protocol, when the door sits behind load balancers.
    pub proxy: Option<Arc<ProxySettings>>,
}

impl Door {
    /// A door with `framing`; a WebSocket one gets `websocket` or the default settings.
    pub fn new(
        framing: Framing,
        tls: Option<Arc<TlsListener>>,
        websocket: Option<WebSocketSettings>,
        proxy: Option<ProxySettings>,
    ) -> Arc<Door> {
        let websocket =
            (framing == Framing::WebSocket).then(|| Arc::new(websocket.unwrap_or_default()));
        Arc::new(Door {
            framing,
            tls,
            websocket,
            proxy: proxy.map(Arc::new),
        })
    }
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
    pub hub: Arc<dyn Registry>,
    /// The same registry as a cluster's, when the tenant spans one.
    pub cluster: Option<Arc<crate::cluster::ClusterHub>>,
    /// What plugin instances of this listener are handed.
    pub ctx: Arc<ListenerContext>,
    /// TLS settings, on TLS listeners.
    pub tls: Option<Arc<TlsListener>>,
    /// The listener's own address's door: its framing, TLS and WebSocket settings.
    pub door: Arc<Door>,
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
    next_connection: Arc<AtomicU64>,
    /// The high bits of a clustered tenant's connection ids (the node's incarnation); 0 for
    /// a local tenant, whose ids carry the listener id instead.
    id_base: u64,
}

impl ListenerShared {
    /// Starts describing a listener named `name` served by `plugin`: line framing, a 1 MiB
    /// frame limit and the default [`Limits`], no TLS, until the builder says otherwise.
    pub fn builder(name: &str, plugin: Arc<LoadedPlugin>) -> ListenerBuilder {
        ListenerBuilder {
            settings: ListenerSettings {
                name: name.to_string(),
                framing: Framing::Lines,
                max_frame: DEFAULT_MAX_FRAME,
                limits: Limits::default(),
                plugin_config: PluginConfig::new(),
                upstreams: Vec::new(),
                websocket: None,
                proxy: None,
                cluster: None,
            },
            plugin,
            tls: None,
        }
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
        let metrics = ListenerMetrics::new(
            &name,
            crate::ops::metrics::ListenerLabels {
                refusals: crate::net::admission::Refused::NAMES,
                budgets: crate::tenant::budget::BudgetKind::NAMES,
            },
        );
        let budgets = Arc::new(Budgets::new(
            limits.budgets,
            crate::tenant::budget::BudgetKind::ALL
                .map(|kind| metrics.budget_refused.counter(kind.name())),
        ));
        let local =
            LocalHub::with_policy(limits.write_queue, settings.max_frame, limits.slow_consumer)
                .counting_full_queues(metrics.queue_dropped.clone(), metrics.queue_closed.clone())
                .with_budgets(limits.write_queue_bytes, budgets.clone());
        // A clustered tenant's ids carry the node's incarnation and continue one sequence
        // across listener restarts (unique cluster-wide); a local one's carry the listener id.
        let (id_base, next_connection) = match &settings.cluster {
            Some(cluster) => cluster.connection_ids(&name),
            None => (0, Arc::new(AtomicU64::new(1))),
        };
        let (hub, cluster_hub): (Arc<dyn Registry>, _) = match settings.cluster {
            Some(cluster) => {
                let hub = Arc::new(crate::cluster::ClusterHub::new(
                    cluster,
                    name.clone(),
                    local,
                ));
                (hub.clone(), Some(hub))
            }
            None => (Arc::new(local), None),
        };
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
        let shared = Arc::new(ListenerShared {
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
            door: Door::new(
                settings.framing,
                tls.clone(),
                settings.websocket,
                settings.proxy,
            ),
            tls,
            routes: routes
                .into_iter()
                .map(|(n, l)| (n.to_ascii_lowercase(), l))
                .collect(),
            drain: CancellationToken::new(),
            force: CancellationToken::new(),
            retired: Arc::new(AtomicBool::new(false)),
            next_connection,
            id_base,
            cluster: cluster_hub.clone(),
        });
        if let Some(hub) = cluster_hub {
            let tenant = Arc::downgrade(&shared);
            hub.on_departures(Box::new(move |ids| {
                if let Some(tenant) = tenant.upgrade() {
                    tenant.close_elsewhere(&ids);
                }
            }));
        }
        shared
    }

    /// Runs the plugin's `on-close` for connections that were open on a cluster node that
    /// vanished (this node speaks for them), so what the plugin tells the others — chat's "left
    /// the chat" — is said once.
    fn close_elsewhere(&self, ids: &[crate::tenant::hub::ConnectionId]) {
        let deployment = self.slot.current();
        let limits = self
            .limits
            .instance
            .unwrap_or(crate::limits::InstanceLimits {
                memory: 64 * 1024 * 1024,
                call_deadline: std::time::Duration::from_secs(1),
            });
        let outcome = deployment.plugin.close_elsewhere(
            self.ctx.clone(),
            deployment.config.clone(),
            limits,
            ids,
        );
        match outcome {
            Ok(()) => tracing::info!(
                listener = %self.name,
                connections = ids.len(),
                "cluster: ran on-close for the connections of a node that vanished"
            ),
            Err(err) => tracing::warn!(listener = %self.name, "cluster: {err}"),
        }
    }

    /// The id of this tenant's next connection: the listener's process-unique id in the high
    /// bits, the tenant's own sequence number in the low [`CONNECTION_SEQ_BITS`]. Unique for the
    /// process and never reused (listener ids are never reused either), never 0, and a plugin
    /// that counts its own ids learns nothing about how busy other tenants are — with one
    /// process-wide counter, the gaps between its ids were other tenants' connections.
    pub fn next_connection_id(&self) -> crate::tenant::hub::ConnectionId {
        let seq = self.next_connection.fetch_add(1, Ordering::Relaxed) & CONNECTION_SEQ_MASK;
        if self.id_base != 0 {
            return self.id_base | seq;
        }
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

    /// What a worker's instance pool needs to know of this listener's tenant.
    pub fn tenant(&self) -> crate::runtime::pool::Tenant<'_> {
        crate::runtime::pool::Tenant {
            id: self.id,
            retired: &self.retired,
            slot: &self.slot,
            ctx: &self.ctx,
            limits: self.limits.instance,
            cpu_share: self.limits.cpu_share,
            held_back: &self.metrics.cpu_held_back,
        }
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

/// Describes a listener for [`Server::add`](crate::net::server::Server::add), from
/// [`ListenerShared::builder`]: `Listener::builder("chat", plugin).framing(Framing::Lines).build()`.
pub struct ListenerBuilder {
    settings: ListenerSettings,
    plugin: Arc<LoadedPlugin>,
    tls: Option<Arc<TlsListener>>,
}

impl ListenerBuilder {
    /// How frames are cut (default: lines).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.settings.framing = framing;
        self
    }

    /// The largest frame a client may send, in bytes (default: 1 MiB).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.settings.max_frame = bytes;
        self
    }

    /// Every connection, instance and byte limit at once (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.limits = limits;
        self
    }

    /// Connections open at once; more are refused (default: [`Limits::default`]'s).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.settings.limits.max_connections = connections;
        self
    }

    /// Frames queued for one connection before it counts as a slow consumer.
    pub fn write_queue(mut self, frames: usize) -> Self {
        self.settings.limits.write_queue = frames;
        self
    }

    /// The `plugin_config` table the plugin reads through the WIT `config` interface.
    pub fn plugin_config(mut self, config: PluginConfig) -> Self {
        self.settings.plugin_config = config;
        self
    }

    /// The WebSocket upgrade settings (path, subprotocols, origins, replies, page), for
    /// [`Framing::WebSocket`]; without them a WebSocket listener uses the defaults.
    pub fn websocket(mut self, settings: WebSocketSettings) -> Self {
        self.settings.websocket = Some(settings);
        self
    }

    /// Serves TLS with these settings.
    pub fn tls(mut self, tls: Arc<TlsListener>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The listener, with its registry, budgets and metrics.
    pub fn build(self) -> Arc<ListenerShared> {
        ListenerShared::build(self.settings, self.plugin, self.tls, Vec::new())
    }
}
