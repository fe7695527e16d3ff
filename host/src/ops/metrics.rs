//! Prometheus metrics: the metric families, the handles the serving paths update, and the text
//! exposition the admin endpoint serves (`GET /metrics`).
//!
//! The families live in one process-wide registry, like the log: one pier process is one
//! server. A listener resolves its label sets once, when it starts ([`ListenerMetrics`]), and
//! each plugin version once, when it is deployed ([`VersionMetrics`]), so serving a frame
//! updates plain atomics and never looks a label set up. Counters of a version that was
//! replaced, or of a listener that was removed, stay exported until the process ends: Prometheus
//! counters must not go backwards, and their last values are what a dashboard needs to explain
//! a reload.
//!
//! Handles built by [`ListenerMetrics::detached`] count without being exported; the load-time
//! plugin check uses them so that a scratch instance never appears as a listener.
//!
//! This module sits below everything that counts: label values are plain strings chosen by the
//! caller (a refusal reason, a fault kind, a budget's name), never the callers' own types, so no
//! serving module is a dependency of metrics ([`LabelledCounters`]).

use std::sync::{Arc, LazyLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Guest call durations: 1 µs (a small echo) up to the default 1 s call deadline, and beyond
/// for calls that waited on upstreams (whose wait is bounded by `request_timeout`).
const CALL_BUCKETS: [f64; 18] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 0.5,
    1.0, 5.0, 10.0,
];

/// Upstream request durations: 50 µs (loopback) up to 10 s.
const UPSTREAM_BUCKETS: [f64; 14] = [
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0, 10.0,
];

/// Every metric family pier exports. The names and labels are documented in ARCHITECTURE.md
/// ("Metrics"); dashboards rely on them.
struct Families {
    registry: Registry,
    connections_open: IntGaugeVec,
    connections_accepted: IntCounterVec,
    connections_refused: IntCounterVec,
    frames_received: IntCounterVec,
    frames_sent: IntCounterVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    call_duration: HistogramVec,
    faults: IntCounterVec,
    plugin_info: IntGaugeVec,
    instances: IntGaugeVec,
    plugin_reloads: IntCounterVec,
    config_reloads: IntCounterVec,
    tls_failures: IntCounterVec,
    websocket_refused: IntCounterVec,
    proxy_refused: IntCounterVec,
    write_queue_full: IntCounterVec,
    budget_refusals: IntCounterVec,
    output_dropped: IntCounterVec,
    cpu_held_back: IntCounterVec,
    upstream_connections: IntGaugeVec,
    upstream_opened: IntCounterVec,
    upstream_closed: IntCounterVec,
    upstream_waits: IntCounterVec,
    upstream_connect_failures: IntCounterVec,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    cluster_connected: IntGauge,
    cluster_messages: IntCounterVec,
    cluster_bytes: IntCounterVec,
    cluster_dropped: IntCounterVec,
    cluster_nodes: IntGaugeVec,
    cluster_claim_duration: HistogramVec,
    cluster_node: IntGaugeVec,
}

const LISTENER: &[&str] = &["listener"];
const VERSION: &[&str] = &["listener", "plugin", "version"];

impl Families {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let family = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            register(&registry, Box::new(family.clone()));
            family
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let family = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            register(&registry, Box::new(family.clone()));
            family
        };
        let call_duration = HistogramVec::new(
            HistogramOpts::new(
                "pier_guest_call_duration_seconds",
                "Time spent in one guest call (on-open, on-frame or a batch of frames, on-timer, on-close).",
            )
            .buckets(CALL_BUCKETS.to_vec()),
            VERSION,
        )
        .unwrap_or_else(|e| panic!("metric pier_guest_call_duration_seconds: {e}"));
        register(&registry, Box::new(call_duration.clone()));
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "pier_upstream_request_duration_seconds",
                "Time from a plugin's upstream request to its reply (or failure), waiting for a connection included.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["upstream"],
        )
        .unwrap_or_else(|e| panic!("metric pier_upstream_request_duration_seconds: {e}"));
        register(&registry, Box::new(upstream_duration.clone()));
        let cluster_connected = IntGauge::new(
            "pier_cluster_connected",
            "1 while this node is connected to a NATS server of its cluster, 0 while it is not (absent without [cluster]).",
        )
        .unwrap_or_else(|e| panic!("metric pier_cluster_connected: {e}"));
        register(&registry, Box::new(cluster_connected.clone()));
        let cluster_claim_duration = HistogramVec::new(
            HistogramOpts::new(
                "pier_cluster_claim_duration_seconds",
                "Time a cluster-wide attributes.claim waited for NATS (JetStream key-value), whatever the outcome.",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            LISTENER,
        )
        .unwrap_or_else(|e| panic!("metric pier_cluster_claim_duration_seconds: {e}"));
        register(&registry, Box::new(cluster_claim_duration.clone()));
        Families {
            cluster_connected,
            cluster_claim_duration,
            cluster_node: gauge(
                "pier_cluster_node_info",
                "1, labelled with this process's cluster node name (join it to the node-local figures, e.g. pier_connections_open).",
                &["node"],
            ),
            cluster_messages: counter(
                "pier_cluster_messages_total",
                "Messages between this node and the others of its tenants, by direction: out (published), in (received).",
                &["listener", "direction"],
            ),
            cluster_bytes: counter(
                "pier_cluster_bytes_total",
                "Payload bytes of those messages, by direction.",
                &["listener", "direction"],
            ),
            cluster_dropped: counter(
                "pier_cluster_dropped_total",
                "Cluster messages dropped, by reason: queue-full (the bounded outgoing queue was full: NATS slow or away), malformed (an incoming message that did not parse), publish (NATS refused it).",
                &["listener", "reason"],
            ),
            cluster_nodes: gauge(
                "pier_cluster_nodes",
                "Other nodes serving the listener that this node hears from now.",
                LISTENER,
            ),
            upstream_duration,
            upstream_connections: gauge(
                "pier_upstream_connections",
                "Pooled upstream connections: state=open (idle or in use, at most max_size per address) or idle.",
                &["upstream", "state"],
            ),
            upstream_opened: counter(
                "pier_upstream_connections_opened_total",
                "Upstream connections opened.",
                &["upstream"],
            ),
            upstream_closed: counter(
                "pier_upstream_connections_closed_total",
                "Idle upstream connections closed by pier, by reason: expired (idle_timeout), stale (found closed by the upstream).",
                &["upstream", "reason"],
            ),
            upstream_waits: counter(
                "pier_upstream_waits_total",
                "Requests that waited because every connection to the address was in use (max_size).",
                &["upstream"],
            ),
            upstream_connect_failures: counter(
                "pier_upstream_connect_failures_total",
                "Failed connection attempts (refused, unreachable, TLS, connect_timeout); the address is skipped for a while.",
                &["upstream"],
            ),
            upstream_requests: counter(
                "pier_upstream_requests_total",
                "Upstream requests by result: ok, unavailable, timeout, frame-too-large, invalid-frame.",
                &["upstream", "result"],
            ),
            output_dropped: counter(
                "pier_guest_output_dropped_total",
                "Guest log, stdout and stderr lines dropped because the plugin wrote faster than its tenant's output rate.",
                LISTENER,
            ),
            cpu_held_back: counter(
                "pier_cpu_held_back_total",
                "Guest calls that waited for the next CPU window because the tenant had used its cpu_share of a worker while another tenant wanted it.",
                LISTENER,
            ),
            budget_refusals: counter(
                "pier_budget_refusals_total",
                "Operations refused because the tenant's budget was spent, by budget: queued_bytes, partial_frame_bytes, attribute_bytes, group_bytes, timers.",
                &["listener", "budget"],
            ),
            connections_open: gauge(
                "pier_connections_open",
                "Client connections open now (on this node; with [cluster], labelled with the node).",
                if NODE.get().is_some() {
                    &["listener", "node"]
                } else {
                    LISTENER
                },
            ),
            connections_accepted: counter(
                "pier_connections_accepted_total",
                "Client connections admitted (and, on TLS listeners, past the handshake).",
                LISTENER,
            ),
            connections_refused: counter(
                "pier_connections_refused_total",
                "Clients closed at once by an admission limit, by the limit.",
                &["listener", "reason"],
            ),
            frames_received: counter(
                "pier_frames_received_total",
                "Frames read from clients, by the plugin version serving at the time.",
                VERSION,
            ),
            frames_sent: counter(
                "pier_frames_sent_total",
                "Frames written to clients (replies, sends, broadcasts).",
                VERSION,
            ),
            bytes_received: counter(
                "pier_bytes_received_total",
                "Bytes read from clients.",
                VERSION,
            ),
            bytes_sent: counter(
                "pier_bytes_sent_total",
                "Bytes written to clients, framing included.",
                VERSION,
            ),
            call_duration,
            faults: counter(
                "pier_plugin_faults_total",
                "Guest calls that failed and cost their connection, by kind: trap, deadline, memory, send-flood, instantiate, reply-too-large.",
                &["listener", "plugin", "version", "kind"],
            ),
            plugin_info: gauge(
                "pier_plugin_info",
                "1 for the plugin version each listener serves now.",
                VERSION,
            ),
            instances: gauge(
                "pier_plugin_instances",
                "Plugin instances alive (each holds a store and its linear memory).",
                LISTENER,
            ),
            plugin_reloads: counter(
                "pier_plugin_reloads_total",
                "Plugin reloads of a listener, by result: swapped, refused.",
                &["listener", "result"],
            ),
            config_reloads: counter(
                "pier_config_reloads_total",
                "Config reloads (SIGHUP, pier reload, POST /reload), by result: applied, refused.",
                &["result"],
            ),
            tls_failures: counter(
                "pier_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason.",
                &["listener", "reason"],
            ),
            websocket_refused: counter(
                "pier_websocket_handshakes_refused_total",
                "WebSocket upgrades the host refused, by reason: timeout, malformed, not-upgrade, version, origin, path, closed.",
                &["listener", "reason"],
            ),
            proxy_refused: counter(
                "pier_proxy_protocol_refused_total",
                "Connections refused at the PROXY protocol header, by reason: untrusted (not from proxy_from), missing, malformed, timeout, too-large.",
                &["listener", "reason"],
            ),
            write_queue_full: counter(
                "pier_write_queue_full_total",
                "Frames refused because a slow client's write queue was full, by the slow-consumer action taken: drop (frame dropped), close (connection closed).",
                &["listener", "action"],
            ),
            registry,
        }
    }
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>) {
    // Only fails on duplicate or inconsistent names, which `Families::new` never builds.
    if let Err(err) = registry.register(collector) {
        panic!("metric registration: {err}");
    }
}

static FAMILIES: LazyLock<Families> = LazyLock::new(Families::new);

/// The cluster node this process is, when it is one: node-local families carry it as a label.
/// Set before anything is counted ([`set_node`]); the label sets are fixed when the families
/// are made.
static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names the cluster node this process is, before the first figure is counted; false when it
/// came too late (the families already exist without the label) or was already set.
pub fn set_node(node: &str) -> bool {
    std::sync::LazyLock::get(&FAMILIES).is_none() && NODE.set(node.to_string()).is_ok()
}

/// Handles of one clustered listener's `pier_cluster_*` figures.
pub struct ClusterMetrics {
    /// Messages published.
    pub messages_out: IntCounter,
    /// Messages received.
    pub messages_in: IntCounter,
    /// Bytes published.
    pub bytes_out: IntCounter,
    /// Bytes received.
    pub bytes_in: IntCounter,
    /// Dropped: the outgoing queue was full.
    pub dropped_queue_full: IntCounter,
    /// Dropped: an incoming message did not parse.
    pub dropped_malformed: IntCounter,
    /// Dropped: NATS refused a publish.
    pub dropped_publish: IntCounter,
    /// Other nodes heard from.
    pub nodes: IntGauge,
    /// How long claims waited for NATS.
    pub claim_duration: Histogram,
}

impl ClusterMetrics {
    /// The handles of listener `name`.
    pub fn new(name: &str) -> ClusterMetrics {
        let f = &*FAMILIES;
        ClusterMetrics {
            messages_out: f.cluster_messages.with_label_values(&[name, "out"]),
            messages_in: f.cluster_messages.with_label_values(&[name, "in"]),
            bytes_out: f.cluster_bytes.with_label_values(&[name, "out"]),
            bytes_in: f.cluster_bytes.with_label_values(&[name, "in"]),
            dropped_queue_full: f.cluster_dropped.with_label_values(&[name, "queue-full"]),
            dropped_malformed: f.cluster_dropped.with_label_values(&[name, "malformed"]),
            dropped_publish: f.cluster_dropped.with_label_values(&[name, "publish"]),
            nodes: f.cluster_nodes.with_label_values(&[name]),
            claim_duration: f.cluster_claim_duration.with_label_values(&[name]),
        }
    }
}

/// Sets `pier_cluster_node_info{node}`.
pub fn cluster_node(node: &str) {
    FAMILIES.cluster_node.with_label_values(&[node]).set(1);
}

/// Sets `pier_cluster_connected`.
pub fn cluster_connected(connected: bool) {
    FAMILIES.cluster_connected.set(i64::from(connected));
}

/// The registry in the Prometheus text format (version 0.0.4).
pub fn encode() -> anyhow::Result<String> {
    let mut out = String::new();
    TextEncoder::new().encode_utf8(&FAMILIES.registry.gather(), &mut out)?;
    Ok(out)
}

/// Counts a config reload by its result.
pub fn config_reload(applied: bool) {
    let result = if applied { "applied" } else { "refused" };
    FAMILIES.config_reloads.with_label_values(&[result]).inc();
}

/// Counts a plugin reload of `listener` by its result.
pub fn plugin_reload(listener: &str, swapped: bool) {
    let result = if swapped { "swapped" } else { "refused" };
    FAMILIES
        .plugin_reloads
        .with_label_values(&[listener, result])
        .inc();
}

/// One listener's (tenant's) label sets.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// The listener's name; `None` for detached handles.
    listener: Option<Arc<str>>,
    /// Connections registered and not yet gone.
    pub open: IntGauge,
    /// Connections registered since start.
    pub accepted: IntCounter,
    /// Plugin instances alive on any worker.
    pub instances: IntGauge,
    /// Frames dropped by the `drop` slow-consumer policy.
    pub queue_dropped: IntCounter,
    /// Connections closed by the `close` slow-consumer policy.
    pub queue_closed: IntCounter,
    /// Admission refusals, by reason.
    pub refused: LabelledCounters,
    /// Budget refusals, by budget (taken by the tenant's `Budgets`).
    pub budget_refused: LabelledCounters,
    /// Guest output lines dropped by the tenant's output rate.
    pub output_dropped: IntCounter,
    /// Guest calls held back for the tenant's CPU share (see `runtime::fair`).
    pub cpu_held_back: IntCounter,
}

/// The label values a listener's labelled counters are made for, so each series exists (at 0)
/// from the start.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLabels {
    /// Every admission refusal reason.
    pub refusals: &'static [&'static str],
    /// Every tenant budget's name.
    pub budgets: &'static [&'static str],
}

impl ListenerMetrics {
    /// Handles for listener `name`, exported.
    pub fn new(name: &str, labels: ListenerLabels) -> Arc<Self> {
        let f = &*FAMILIES;
        let refused = LabelledCounters::exported(&f.connections_refused, &[name], labels.refusals);
        Arc::new(ListenerMetrics {
            listener: Some(Arc::from(name)),
            open: match NODE.get() {
                Some(node) => f.connections_open.with_label_values(&[name, node]),
                None => f.connections_open.with_label_values(&[name]),
            },
            accepted: f.connections_accepted.with_label_values(&[name]),
            instances: f.instances.with_label_values(&[name]),
            queue_dropped: f.write_queue_full.with_label_values(&[name, "drop"]),
            queue_closed: f.write_queue_full.with_label_values(&[name, "close"]),
            refused,
            budget_refused: LabelledCounters::exported(&f.budget_refusals, &[name], labels.budgets),
            output_dropped: f.output_dropped.with_label_values(&[name]),
            cpu_held_back: f.cpu_held_back.with_label_values(&[name]),
        })
    }

    /// Handles that count but are not exported.
    pub fn detached() -> Arc<Self> {
        Arc::new(ListenerMetrics {
            listener: None,
            open: detached_gauge(),
            accepted: detached_counter(),
            instances: detached_gauge(),
            queue_dropped: detached_counter(),
            queue_closed: detached_counter(),
            refused: LabelledCounters::detached(),
            budget_refused: LabelledCounters::detached(),
            output_dropped: detached_counter(),
            cpu_held_back: detached_counter(),
        })
    }

    /// Counts a client refused by admission for reason `why`.
    pub fn refused(&self, why: &str) {
        self.refused.inc(why);
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self, reason: &str) {
        if let Some(name) = &self.listener {
            FAMILIES
                .tls_failures
                .with_label_values(&[name.as_ref(), reason])
                .inc();
        }
    }

    /// Counts a connection refused at its PROXY protocol header.
    pub fn proxy_refused(&self, reason: &str) {
        if let Some(name) = &self.listener {
            FAMILIES
                .proxy_refused
                .with_label_values(&[name.as_ref(), reason])
                .inc();
        }
    }

    /// Counts a WebSocket upgrade the host refused.
    pub fn websocket_refused(&self, reason: &str) {
        if let Some(name) = &self.listener {
            FAMILIES
                .websocket_refused
                .with_label_values(&[name.as_ref(), reason])
                .inc();
        }
    }

    /// Handles for plugin `plugin` at `version` serving this listener, marked as the version
    /// serving now in `pier_plugin_info`; `fault_kinds` are the fault labels it may count.
    pub fn version(
        &self,
        plugin: &str,
        version: &str,
        fault_kinds: &'static [&'static str],
    ) -> VersionMetrics {
        let Some(listener) = &self.listener else {
            return VersionMetrics::detached();
        };
        let f = &*FAMILIES;
        let labels = [listener.as_ref(), plugin, version];
        f.plugin_info.with_label_values(&labels).set(1);
        VersionMetrics {
            frames_received: f.frames_received.with_label_values(&labels),
            frames_sent: f.frames_sent.with_label_values(&labels),
            bytes_received: f.bytes_received.with_label_values(&labels),
            bytes_sent: f.bytes_sent.with_label_values(&labels),
            call_duration: f.call_duration.with_label_values(&labels),
            faults: LabelledCounters::exported(&f.faults, &labels, fault_kinds),
        }
    }

    /// Marks `plugin` at `version` as no longer serving this listener.
    pub fn retire_version(&self, plugin: &str, version: &str) {
        if let Some(listener) = &self.listener {
            // Removed rather than set to 0: an info metric lists what exists now.
            let _ = FAMILIES
                .plugin_info
                .remove_label_values(&[listener.as_ref(), plugin, version]);
        }
    }
}

/// One plugin version's label sets on one listener.
#[derive(Clone, Debug)]
pub struct VersionMetrics {
    /// Frames read from clients while this version served.
    pub frames_received: IntCounter,
    /// Frames written to clients while this version served.
    pub frames_sent: IntCounter,
    /// Bytes read.
    pub bytes_received: IntCounter,
    /// Bytes written.
    pub bytes_sent: IntCounter,
    /// Guest call durations.
    pub call_duration: Histogram,
    /// Faults, by kind.
    faults: LabelledCounters,
}

impl VersionMetrics {
    /// Handles that count but are not exported.
    pub fn detached() -> Self {
        VersionMetrics {
            frames_received: detached_counter(),
            frames_sent: detached_counter(),
            bytes_received: detached_counter(),
            bytes_sent: detached_counter(),
            call_duration: Histogram::with_opts(HistogramOpts::new("detached", "detached"))
                .unwrap_or_else(|e| panic!("detached histogram: {e}")),
            faults: LabelledCounters::detached(),
        }
    }

    /// Counts a fault of kind `kind`.
    pub fn fault(&self, kind: &str) {
        self.faults.inc(kind);
    }

    /// Adds one batch's traffic.
    pub fn traffic(&self, frames_in: u64, frames_out: u64, bytes_in: u64, bytes_out: u64) {
        for (counter, n) in [
            (&self.frames_received, frames_in),
            (&self.frames_sent, frames_out),
            (&self.bytes_received, bytes_in),
            (&self.bytes_sent, bytes_out),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

/// Counters of one family for a fixed set of values of its last label, given by the caller when
/// the handles are made (so every series is exported from the start, at 0) and picked by value
/// when counting. A value not given at creation is counted nowhere: label sets stay bounded
/// whatever a caller passes.
#[derive(Clone, Debug)]
pub struct LabelledCounters(Arc<[(&'static str, IntCounter)]>);

impl LabelledCounters {
    fn exported(family: &IntCounterVec, labels: &[&str], values: &'static [&'static str]) -> Self {
        LabelledCounters(
            values
                .iter()
                .map(|&value| {
                    let mut all = labels.to_vec();
                    all.push(value);
                    (value, family.with_label_values(&all))
                })
                .collect(),
        )
    }

    /// Handles that count nothing anyone sees.
    pub fn detached() -> Self {
        LabelledCounters(Arc::new([]))
    }

    /// The counter for `value`: the exported one, or a detached one when `value` has none.
    pub fn counter(&self, value: &str) -> IntCounter {
        self.0
            .iter()
            .find(|(v, _)| *v == value)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(detached_counter)
    }

    /// Counts one event labelled `value`.
    pub fn inc(&self, value: &str) {
        if let Some((_, counter)) = self.0.iter().find(|(v, _)| *v == value) {
            counter.inc();
        }
    }

    /// The count for `value` so far (0 when it has no counter).
    pub fn get(&self, value: &str) -> u64 {
        self.0
            .iter()
            .find(|(v, _)| *v == value)
            .map_or(0, |(_, c)| c.get())
    }
}

pub(crate) fn detached_counter() -> IntCounter {
    IntCounter::new("detached", "detached").unwrap_or_else(|e| panic!("detached counter: {e}"))
}

/// One upstream pool's handles.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    open: IntGauge,
    idle: IntGauge,
    /// Connections opened.
    pub opened: IntCounter,
    /// Idle connections closed after `idle_timeout`.
    pub expired: IntCounter,
    /// Idle connections found closed by the upstream.
    pub stale: IntCounter,
    /// Requests that waited for a connection.
    pub waits: IntCounter,
    /// Failed connection attempts.
    pub connect_failed: IntCounter,
    /// Requests, by result.
    results: LabelledCounters,
    duration: Histogram,
}

impl UpstreamMetrics {
    /// Handles for upstream `name`, whose requests end in one of `results`.
    pub fn new(name: &str, results: &'static [&'static str]) -> Self {
        let f = &*FAMILIES;
        UpstreamMetrics {
            open: f.upstream_connections.with_label_values(&[name, "open"]),
            idle: f.upstream_connections.with_label_values(&[name, "idle"]),
            opened: f.upstream_opened.with_label_values(&[name]),
            expired: f.upstream_closed.with_label_values(&[name, "expired"]),
            stale: f.upstream_closed.with_label_values(&[name, "stale"]),
            waits: f.upstream_waits.with_label_values(&[name]),
            connect_failed: f.upstream_connect_failures.with_label_values(&[name]),
            results: LabelledCounters::exported(&f.upstream_requests, &[name], results),
            duration: f.upstream_duration.with_label_values(&[name]),
        }
    }

    /// Counts a finished request by its result label.
    pub fn finished(&self, result: &str, took: std::time::Duration) {
        self.results.inc(result);
        self.duration.observe(took.as_secs_f64());
    }

    /// Publishes the pool's sizes.
    pub fn set_sizes(&self, open: usize, idle: usize) {
        self.open.set(i64::try_from(open).unwrap_or(i64::MAX));
        self.idle.set(i64::try_from(idle).unwrap_or(i64::MAX));
    }
}

fn detached_gauge() -> IntGauge {
    IntGauge::new("detached", "detached").unwrap_or_else(|e| panic!("detached gauge: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_update_the_exposition() {
        let labels = ListenerLabels {
            refusals: &["max_connections", "new_connections_per_second"],
            budgets: &["timers"],
        };
        let listener = ListenerMetrics::new("metrics-unit", labels);
        listener.accepted.inc();
        listener.refused("new_connections_per_second");
        // A value the handles were not made for is counted nowhere: label sets stay bounded.
        listener.refused("made-up");
        listener.tls_failure("timeout");
        let version = listener.version("echo", "abc123", &["trap", "deadline"]);
        version.traffic(3, 2, 30, 20);
        version.fault("deadline");
        version.call_duration.observe(0.000_002);
        let text = encode().expect("encodes");
        for line in [
            r#"pier_connections_accepted_total{listener="metrics-unit"} 1"#,
            r#"pier_connections_refused_total{listener="metrics-unit",reason="new_connections_per_second"} 1"#,
            r#"pier_connections_refused_total{listener="metrics-unit",reason="max_connections"} 0"#,
            r#"pier_budget_refusals_total{budget="timers",listener="metrics-unit"} 0"#,
            r#"pier_tls_handshake_failures_total{listener="metrics-unit",reason="timeout"} 1"#,
            r#"pier_frames_received_total{listener="metrics-unit",plugin="echo",version="abc123"} 3"#,
            r#"pier_bytes_sent_total{listener="metrics-unit",plugin="echo",version="abc123"} 20"#,
            r#"pier_plugin_faults_total{kind="deadline",listener="metrics-unit",plugin="echo",version="abc123"} 1"#,
            r#"pier_plugin_info{listener="metrics-unit",plugin="echo",version="abc123"} 1"#,
            r#"pier_guest_call_duration_seconds_bucket{listener="metrics-unit",plugin="echo",version="abc123",le="0.0000025"} 1"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        assert!(!text.contains("made-up"), "{text}");
        assert_eq!(listener.refused.get("new_connections_per_second"), 1);
        listener.retire_version("echo", "abc123");
        assert!(!encode().expect("encodes").contains(
            r#"pier_plugin_info{listener="metrics-unit",plugin="echo",version="abc123"}"#
        ));
    }

    #[test]
    fn detached_handles_are_not_exported() {
        let listener = ListenerMetrics::detached();
        listener.accepted.inc();
        listener
            .version("echo", "detached-v", &["trap"])
            .traffic(1, 1, 1, 1);
        assert!(!encode().expect("encodes").contains("detached-v"));
    }
}
