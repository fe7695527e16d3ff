//! The accept loop and graceful shutdown.
//!
//! [`run`] takes an already-bound listener and a shutdown future (mini-redis style), so the
//! binary, tests and embedders all drive the same code. A connection permit is taken *before*
//! `accept`, so at the limit new clients wait in the kernel's backlog instead of being accepted
//! and dropped. Accepted sockets go to the least-loaded worker thread.
//!
//! Shutdown: stop accepting, tell every connection to drain (answer what its client already
//! sent, flush, close), wait for them up to the drain deadline, then drop whatever is left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::listener::ListenerShared;
use crate::runtime::Runtime;
use crate::worker::{Job, Shutdown, WorkerPool};

/// Server-wide settings (per-listener ones live in [`ListenerShared`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most connections open at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Worker threads, each with its own plugin instances.
    pub workers: usize,
    /// How long shutdown waits for connections to flush before dropping them.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    runtime: Arc<Runtime>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let signals = Shutdown {
        drain: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let pool = WorkerPool::start(config.workers, runtime, signals.clone())?;
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Usually fd exhaustion (EMFILE/ENFILE): back off instead of spinning, and
                // keep serving the connections already open.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY: {err}");
        }
        match stream.into_std() {
            Ok(stream) => pool.dispatch(Job {
                stream,
                permit,
                listener: shared.clone(),
            }),
            Err(err) => warn!("cannot hand a connection to a worker: {err}"),
        }
    }

    drop(listener);
    info!(
        "shutting down: draining open connections (up to {:?})",
        config.drain_timeout
    );
    signals.drain.cancel();
    let joined = tokio::task::spawn_blocking(move || pool.join());
    tokio::pin!(joined);
    if tokio::time::timeout(config.drain_timeout, &mut joined)
        .await
        .is_err()
    {
        warn!("drain deadline passed; dropping the remaining connections");
        signals.force.cancel();
        if let Err(err) = joined.await {
            error!("worker shutdown failed: {err}");
        }
    }
    info!("shut down");
    Ok(())
}
