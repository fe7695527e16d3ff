//! Outbound connections owned by the host: named upstreams (pier.toml `[[upstream]]`), each a
//! pool of connections per address, reached by plugins through the WIT `upstream` interface
//! and by `pier send --repeat`.
//!
//! - [`pool`]: one upstream's pool — reuse, `max_size` per address, idle expiry, dead
//!   connection detection, failover between addresses, TLS.
//! - [`Grants`]: the upstreams one listener may use; a name missing here does not exist for
//!   that listener's plugin (`not-granted`).
//!
//! - [`socket`]: a TCP socket that moves between runtimes, so a connection pooled by one
//!   worker can be used by any other.
//!
//! A request does its I/O on the calling worker's runtime; pools are shared by every worker,
//! so `max_size` is one count for the whole process. Only the idle sweepers run on a small
//! runtime thread of their own (`pier-upstream`).

pub mod pool;
pub mod socket;

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

pub use self::pool::{Pool, UpstreamError};
use crate::net::framing::Framing;

/// One `[[upstream]]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSpec {
    /// Unique name; listeners grant it in `upstreams` and plugins pass it to `request`.
    pub name: String,
    /// `host:port` addresses, balanced round robin; one that fails to connect is skipped for
    /// [`pool::DOWN_FOR`].
    pub addresses: Vec<String>,
    /// How frames are delimited on the upstream connection (raw, lines or length-prefixed).
    pub framing: Framing,
    /// Largest request or reply frame.
    pub max_frame: usize,
    /// Pooled connections per address, never exceeded; callers beyond it wait.
    pub max_size: usize,
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// Longest wait for a new connection (TCP and TLS handshake).
    pub connect_timeout: Duration,
    /// Longest a request may take in all: waiting for a connection, sending, the reply.
    pub request_timeout: Duration,
    /// TLS to the upstream, when set.
    pub tls: Option<UpstreamTls>,
}

/// `[upstream.tls]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates to verify the upstream with (default: none, so `verify` needs it).
    pub ca: Option<PathBuf>,
    /// Client certificate, for upstreams that require one.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Name to verify and send with SNI (default: the host of each address).
    pub server_name: Option<String>,
    /// Verify the upstream's certificate (default true).
    pub verify: bool,
}

/// The upstreams one listener may use, by name, in the order of its `upstreams` list.
pub type Grants = Vec<(String, Arc<Pool>)>;

/// A listener's grants, replaced in place when a config reload rebuilds a pool.
#[derive(Debug, Default)]
pub struct GrantSlot(RwLock<Arc<Grants>>);

impl GrantSlot {
    /// A slot holding `grants`.
    pub fn new(grants: Grants) -> Self {
        GrantSlot(RwLock::new(Arc::new(grants)))
    }

    /// The grants now.
    pub fn current(&self) -> Arc<Grants> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether no upstream is granted.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Replaces the grants; requests already running finish on the pools they started with.
    pub fn replace(&self, grants: Grants) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(grants);
    }

    /// The pool `name`, if granted.
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, pool)| pool.clone())
    }

    /// The granted names, in config order of the listener's `upstreams`.
    pub fn names(&self) -> Vec<String> {
        self.current().iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The runtime the pools' idle sweepers run on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pier-upstream")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the upstream runtime: {e}"))
    });
    &RUNTIME
}
