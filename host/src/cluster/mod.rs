//! One tenant over many pier nodes, joined through NATS (`[cluster]` in pier.toml, or
//! `pier serve --cluster nats://...`).
//!
//! Without a cluster nothing here runs: a listener's registry is the in-process
//! [`crate::tenant::hub::LocalHub`]. With one, every listener's registry is a [`ClusterHub`]:
//! the same `LocalHub` for the node's own connections, plus a [`mirror::Mirror`] of the other
//! nodes' connections (who, their attributes and groups), kept by presence messages, and a
//! [`link`] task per tenant that carries frames between nodes. What travels, on which subject,
//! is in [`wire`]. NATS does the membership, routing and failover; pier adds no gossip or
//! consensus of its own.
//!
//! The [`Cluster`] is the process's one NATS connection (async-nats, which reconnects, fails
//! over between the configured servers and restores subscriptions by itself; it echoes, so two
//! registries of one tenant in this process — a restarted listener beside the one it replaces —
//! hear each other) and what every
//! tenant shares: the node's name, its incarnation and the connection state.

pub mod buckets;
pub mod claims;
pub mod hub;
pub mod link;
pub mod mirror;
pub mod rollout;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::sys::lock;

pub use hub::ClusterHub;

/// `[cluster]`: how this node reaches NATS and what it is called.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); the client fails over
    /// between them.
    pub servers: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The first token of every subject pier uses.
    pub subject_prefix: String,
    /// How this node proves who it is to NATS.
    pub auth: ClusterAuth,
    /// TLS to the NATS servers.
    pub tls: Option<ClusterTls>,
}

/// NATS credentials, always from files (never on the command line).
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterAuth {
    /// None (a NATS server without authorization, e.g. on a private network).
    None,
    /// A `.creds` file (JWT and NKey seed).
    Credentials(PathBuf),
    /// A token read from a file.
    TokenFile(PathBuf),
    /// A user name and a password read from a file.
    UserPassword {
        /// The user.
        user: String,
        /// The file holding the password.
        password_file: PathBuf,
    },
}

/// `[cluster.tls]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterTls {
    /// CA certificates that sign the NATS servers' certificates.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for NATS servers that verify clients.
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl ClusterSpec {
    /// The spec for `--cluster URL [--node NAME]`.
    pub fn from_flags(servers: Vec<String>, node: Option<String>) -> Result<ClusterSpec> {
        let spec = ClusterSpec {
            servers,
            node: node.unwrap_or_else(default_node_name),
            subject_prefix: "pier".into(),
            auth: ClusterAuth::None,
            tls: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Refuses what cannot work: no server, an empty node name or subject prefix.
    pub fn check(&self) -> Result<()> {
        if self.servers.is_empty() {
            bail!("cluster: `nats` names no server");
        }
        for server in &self.servers {
            server
                .parse::<async_nats::ServerAddr>()
                .with_context(|| format!("cluster: `{server}` is not a NATS server URL"))?;
        }
        if self.node.is_empty() || self.node.len() > 128 {
            bail!("cluster: `node` must be 1 to 128 characters");
        }
        if self.subject_prefix.is_empty() {
            bail!("cluster: `subject_prefix` cannot be empty");
        }
        Ok(())
    }
}

/// The host name and the process id: unique on one machine and readable in logs.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "pier".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The process's NATS connection and what every clustered tenant shares.
pub struct Cluster {
    client: async_nats::Client,
    /// This node's name.
    pub node: String,
    /// This process's incarnation: the high bits of every connection id it hands out, drawn at
    /// random at start-up (see [`Cluster::connection_ids`]).
    pub incarnation: u32,
    /// Every subject starts with it.
    pub prefix: String,
    connected: watch::Receiver<bool>,
    /// Cluster-wide unique attribute values.
    pub claims: claims::Claims,
    /// Plugin versions rolled out to the cluster.
    pub rollout: rollout::Rollout,
    /// Per tenant name, the sequence of its connection ids, shared by every incarnation of the
    /// listener in this process (a restarted listener continues the sequence).
    sequences: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Per tenant name, how many registries it has had in this process.
    members: Mutex<HashMap<String, u64>>,
}

/// Bits of a clustered connection id below the incarnation.
pub const INCARNATION_SHIFT: u32 = 40;

impl Cluster {
    /// Connects to NATS in the background: this returns at once, and while no server answers
    /// the node serves its own clients and keeps trying (one log line when it connects, one
    /// when it loses the connection).
    pub async fn start(spec: &ClusterSpec) -> Result<Arc<Cluster>> {
        let (state_tx, connected) = watch::channel(false);
        let state_tx = Arc::new(state_tx);
        let options = connect_options(spec).await?;
        let node = spec.node.clone();
        let events = state_tx.clone();
        // While NATS is away the client retries every 2 s and reports each failure: one line
        // per outage, the rest at debug level, so an outage cannot fill the log.
        let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = options
            .name(format!("pier {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(2_000))
            })
            .event_callback(move |event| {
                let events = events.clone();
                let node = node.clone();
                let quiet = quiet.clone();
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::Connected => {
                            quiet.store(false, Ordering::Relaxed);
                            info!(node = %node, "cluster: connected to NATS");
                            crate::ops::metrics::cluster_connected(true);
                            events.send_replace(true);
                        }
                        async_nats::Event::Disconnected => {
                            warn!(node = %node, "cluster: lost NATS; cross-node traffic waits, local clients are served");
                            crate::ops::metrics::cluster_connected(false);
                            events.send_replace(false);
                        }
                        async_nats::Event::ClientError(err) => {
                            if quiet.swap(true, Ordering::Relaxed) {
                                tracing::debug!(node = %node, "cluster: NATS: {err}");
                            } else {
                                warn!(node = %node, "cluster: cannot reach NATS ({err}); retrying every 2 s, local clients are served");
                            }
                        }
                        other => info!(node = %node, "cluster: NATS {other}"),
                    }
                }
            })
            .connect(spec.servers.clone())
            .await
            .context("cluster: cannot set up the NATS client")?;
        crate::ops::metrics::cluster_connected(false);
        crate::ops::metrics::cluster_node(&spec.node);
        let incarnation = loop {
            let drawn = rand::random::<u32>() & 0x00ff_ffff;
            if drawn != 0 {
                break drawn;
            }
        };
        info!(
            node = %spec.node,
            incarnation,
            servers = %spec.servers.join(","),
            "cluster: node started; connecting to NATS"
        );
        Ok(Arc::new(Cluster {
            claims: claims::Claims::new(client.clone(), &spec.subject_prefix),
            rollout: rollout::Rollout::new(client.clone(), &spec.subject_prefix),
            client,
            node: spec.node.clone(),
            incarnation,
            prefix: spec.subject_prefix.clone(),
            connected,
            sequences: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
        }))
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether NATS is connected now, and its changes.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The name tenant `name`'s next registry goes by in the cluster: the node's name for the
    /// first, `NODE#2`, `NODE#3`... for the ones a listener restart makes.
    pub fn member(&self, name: &str) -> String {
        let mut members = lock(&self.members);
        let count = members.entry(name.to_string()).or_insert(0);
        *count += 1;
        match *count {
            1 => self.node.clone(),
            n => format!("{}#{n}", self.node),
        }
    }

    /// Where tenant `name`'s connection ids come from: the incarnation in the high bits (24
    /// random bits, so two processes share it with odds of one in 16 million per pair; a
    /// node that hears another node with its own incarnation logs it) and a sequence in the
    /// low [`INCARNATION_SHIFT`] bits that survives listener restarts. Ids are therefore
    /// unique across the cluster and never reused within a process.
    pub fn connection_ids(&self, name: &str) -> (u64, Arc<AtomicU64>) {
        let sequence = lock(&self.sequences)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(AtomicU64::new(1)))
            .clone();
        (u64::from(self.incarnation) << INCARNATION_SHIFT, sequence)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// The NATS connection options `spec` asks for: credentials (read from their files) and TLS.
pub async fn connect_options(spec: &ClusterSpec) -> Result<async_nats::ConnectOptions> {
    let mut options = match &spec.auth {
        ClusterAuth::None => async_nats::ConnectOptions::new(),
        ClusterAuth::Credentials(path) => async_nats::ConnectOptions::new()
            .credentials_file(path)
            .await
            .with_context(|| format!("cluster: cannot read {}", path.display()))?,
        ClusterAuth::TokenFile(path) => async_nats::ConnectOptions::with_token(read_secret(path)?),
        ClusterAuth::UserPassword {
            user,
            password_file,
        } => async_nats::ConnectOptions::with_user_and_password(
            user.clone(),
            read_secret(password_file)?,
        ),
    };
    if let Some(tls) = &spec.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

fn read_secret(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cluster: cannot read {}", path.display()))?
        .trim()
        .to_string())
}
