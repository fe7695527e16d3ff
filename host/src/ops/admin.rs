//! The admin listener: what an operator (or Prometheus) asks a running pier.
//!
//! - `GET /metrics`: every metric in the Prometheus text format ([`crate::ops::metrics`]).
//! - `GET /healthz`: `ok` while pier serves.
//! - `GET /plugins`: JSON, one entry per listener and SNI route: plugin, version, when it was
//!   deployed, instances alive, faults by kind.
//! - `GET /connections`: JSON, one entry per open client connection: listener, peer, TLS
//!   identity, age, frames and bytes in and out.
//! - `POST /reload`: re-reads the config and plugins, like SIGHUP; answers with what changed
//!   (200) or why nothing did (422).
//!
//! Off by default; it binds only the address the operator names (`--admin`, `[admin]
//! address`), and warns when that is not a loopback address: it has no authentication, and
//! `/connections` shows every client's address and certificate subject. Served with axum on
//! the control thread's runtime, away from the workers that serve clients; the walks over
//! every connection or metric run on a blocking thread so they cannot delay the accept loops
//! that share that runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::deploy::Deployer;
use crate::runtime::FaultKind;
use crate::tenant::listener::ListenerShared;

/// Serves the admin endpoints on an already bound `listener` until `stop` is cancelled (so a
/// caller can bind it before starting anything else). Returns the bound address.
pub fn spawn(
    listener: TcpListener,
    deployer: Arc<Deployer>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(
            "the admin endpoint on {bound} is reachable from other machines and has no authentication"
        );
    }
    tokio::spawn(serve(listener, deployer, stop));
    Ok(bound)
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, deployer: Arc<Deployer>, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/plugins", get(plugins))
        .route("/connections", get(connections))
        .route("/reload", post(reload))
        .with_state(deployer);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = served {
        error!("admin endpoint stopped: {err}");
    }
}

async fn metrics() -> Response {
    match off_the_runtime(crate::ops::metrics::encode).await {
        Ok(Ok(text)) => (
            [(header::CONTENT_TYPE, crate::ops::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Ok(Err(err)) | Err(err) => {
            error!("cannot encode metrics: {err:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n")).into_response()
        }
    }
}

/// Runs `work` on a blocking thread: the admin endpoint shares its runtime with the accept
/// loops, and walking every connection or every metric series of a large server must not
/// delay an accept.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work).await?)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// One listener's (or SNI route's) plugin, for `GET /plugins`.
#[derive(Serialize)]
struct PluginEntry {
    listener: String,
    /// This node's cluster name (absent without a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// The listener's bound address (the parent's, for an SNI route).
    address: String,
    plugin: String,
    /// The sha256-based version hash of the component.
    version: String,
    /// Increases by one per hot swap.
    generation: u64,
    /// RFC 3339, when this version started serving.
    loaded_at: String,
    /// Whether it was loaded from the compiled-artifact cache, and how long loading took.
    from_cache: bool,
    load_ms: f64,
    instances: i64,
    connections: u32,
    faults: std::collections::BTreeMap<&'static str, u64>,
}

async fn plugins(State(deployer): State<Arc<Deployer>>) -> Response {
    let node = deployer.node();
    let entries: Vec<PluginEntry> = tenants(&deployer)
        .into_iter()
        .map(|(shared, addr)| {
            let deployment = shared.slot.current();
            let plugin = &deployment.plugin;
            PluginEntry {
                listener: shared.name.to_string(),
                node: node.clone(),
                address: addr.to_string(),
                plugin: plugin.name.to_string(),
                version: plugin.version.clone(),
                generation: deployment.generation,
                loaded_at: humantime::format_rfc3339_millis(deployment.deployed_at).to_string(),
                from_cache: plugin.from_cache,
                load_ms: plugin.load_time.as_secs_f64() * 1e3,
                instances: shared.metrics.instances.get(),
                connections: shared.hub.listener_stats().connected,
                faults: FaultKind::ALL
                    .iter()
                    .map(|&kind| (kind.name(), shared.ctx.faults.of(kind)))
                    .collect(),
            }
        })
        .collect();
    axum::Json(entries).into_response()
}

/// One open connection, for `GET /connections`.
#[derive(Serialize)]
struct ConnectionEntry {
    id: u64,
    listener: String,
    peer: String,
    local: String,
    /// What the TLS handshake established; `null` on plain TCP.
    tls: Option<TlsEntry>,
    /// RFC 3339.
    connected_at: String,
    age_seconds: f64,
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// A TLS client's identity.
#[derive(Serialize)]
struct TlsEntry {
    server_name: Option<String>,
    alpn: Option<String>,
    /// The verified client certificate's subject, e.g. `CN=client`.
    subject: Option<String>,
    sans: Vec<String>,
    /// Lower-case hex SHA-256 of the client certificate.
    fingerprint: Option<String>,
}

async fn connections(State(deployer): State<Arc<Deployer>>) -> Response {
    match off_the_runtime(move || connection_entries(&deployer)).await {
        Ok(entries) => axum::Json(entries).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n")).into_response(),
    }
}

fn connection_entries(deployer: &Deployer) -> Vec<ConnectionEntry> {
    let mut entries: Vec<ConnectionEntry> = tenants(deployer)
        .into_iter()
        .flat_map(|(shared, _)| shared.hub.all_connection_stats())
        .map(|stats| {
            let peer = stats.peer;
            ConnectionEntry {
                id: peer.id,
                listener: peer.listener.to_string(),
                peer: peer.remote_addr,
                local: peer.local_addr,
                tls: peer.tls.map(|tls| TlsEntry {
                    server_name: tls.server_name,
                    alpn: tls.alpn,
                    subject: tls.client_subject,
                    sans: tls.client_sans,
                    fingerprint: tls.client_fingerprint,
                }),
                connected_at: humantime::format_rfc3339_millis(peer.connected_at).to_string(),
                age_seconds: stats.age.as_secs_f64(),
                frames_in: stats.frames_in,
                frames_out: stats.frames_out,
                bytes_in: stats.bytes_in,
                bytes_out: stats.bytes_out,
            }
        })
        .collect();
    entries.sort_by_key(|e| e.id);
    entries
}

async fn reload(State(deployer): State<Arc<Deployer>>) -> Response {
    let result = deployer.reload().await;
    let response = match &result {
        Ok(report) => axum::Json(report).into_response(),
        Err(err) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({ "error": format!("{err:#}") })),
        )
            .into_response(),
    };
    crate::deploy::log_report("POST /reload", result);
    response
}

/// Every running listener and each of its SNI routes, with the address it accepts on.
fn tenants(deployer: &Deployer) -> Vec<(Arc<ListenerShared>, SocketAddr)> {
    deployer
        .server()
        .listeners()
        .into_iter()
        .flat_map(|(shared, addr)| {
            let routes: Vec<_> = shared
                .routes
                .iter()
                .map(|(_, r)| (r.clone(), addr))
                .collect();
            std::iter::once((shared, addr)).chain(routes)
        })
        .collect()
}
