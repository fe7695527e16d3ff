//! The accept loops, the set of running listeners, and graceful shutdown.
//!
//! A [`Server`] owns the worker threads and any number of listeners (tenants); listeners can be
//! added and removed while it runs, which is how a config reload adds, removes and restarts
//! them. [`run`] serves one listener until a shutdown future completes (mini-redis style), for
//! the simple CLI form, tests and embedders.
//!
//! Admission happens right after `accept` ([`crate::net::admission`]): a client beyond a limit is
//! closed at once instead of waiting in the backlog. Accepted sockets go to the least-loaded
//! worker thread.
//!
//! Shutdown: stop accepting, tell every connection to drain (answer what its client already
//! sent, flush, close), wait for them up to the drain deadline, then drop whatever is left.

use crate::sys::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::net::admission::Admission;
use crate::net::connection::{Job, Place};
use crate::net::proxy::ProxyRefusal;
use crate::net::worker::WorkerPool;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::tenant::listener::{Door, ListenerShared};

/// Server-wide settings (per-listener ones live in [`ListenerShared`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Worker threads, each with its own plugin instances.
    pub workers: usize,
    /// How long shutdown waits for connections to flush before dropping them.
    pub drain_timeout: Duration,
}

/// How long shutdown waits for the workers once the drain deadline forced every connection.
const FORCE_GRACE: Duration = Duration::from_secs(5);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Describes a [`Server`], from [`Server::builder`]. Without a runtime of its own it makes one
/// from [`RuntimeConfig::default`] as amended by the builder.
#[derive(Default)]
pub struct ServerBuilder {
    runtime: Option<Arc<Runtime>>,
    runtime_config: RuntimeConfig,
    config: ServerConfig,
}

impl ServerBuilder {
    /// Runs plugins on `runtime` (shared with other servers, or configured in full); the
    /// runtime settings of this builder are then not used.
    pub fn runtime(mut self, runtime: Arc<Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The settings of the runtime the server makes (memory limit, cache, instances).
    pub fn runtime_config(mut self, config: RuntimeConfig) -> Self {
        self.runtime_config = config;
        self
    }

    /// Longest a single guest call may run (default: 1 s).
    pub fn call_deadline(mut self, deadline: Duration) -> Self {
        self.runtime_config.call_deadline = deadline;
        self
    }

    /// Worker threads, each with its own plugin instances (default: one per CPU).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// How long [`Server::shutdown`] lets connections flush before dropping them (default: 10 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Starts the runtime (unless one was given) and the worker threads.
    pub fn build(self) -> Result<Arc<Server>> {
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Runtime::new(self.runtime_config).context("cannot start the wasm runtime")?,
        };
        Server::new(runtime, &self.config)
    }
}

/// A listener that is accepting.
struct Running {
    shared: Arc<ListenerShared>,
    addr: SocketAddr,
    admission: Arc<Admission>,
    /// Stops every door's accept loop.
    stop: CancellationToken,
    /// The accept loops: the listener's own address first, then its other doors.
    tasks: Vec<JoinHandle<()>>,
    /// The other doors, with their bound addresses.
    doors: Vec<(SocketAddr, Arc<Door>)>,
    /// Duplicates of the listening sockets (own address first, then the doors), so that
    /// [`Server::listening_sockets`] can pass them to a new pier process; closed with the entry.
    sockets: Vec<OwnedFd>,
}

/// Worker threads plus the listeners feeding them.
pub struct Server {
    runtime: Arc<Runtime>,
    pool: Arc<WorkerPool>,
    drain_timeout: Duration,
    running: Mutex<HashMap<String, Running>>,
    /// Every listener ever added, so shutdown also drains connections of removed or restarted
    /// ones that are still open.
    all: Mutex<Vec<Weak<ListenerShared>>>,
}

impl Server {
    /// Starts the worker threads.
    pub fn new(runtime: Arc<Runtime>, config: &ServerConfig) -> Result<Arc<Self>> {
        Ok(Arc::new(Server {
            pool: Arc::new(WorkerPool::start(config.workers, runtime.clone())?),
            runtime,
            drain_timeout: config.drain_timeout,
            running: Mutex::new(HashMap::new()),
            all: Mutex::new(Vec::new()),
        }))
    }

    /// Starts describing a server: `Server::builder().workers(2).build()?`.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The wasmtime runtime its workers run plugins on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Loads, checks and compiles a plugin for this server's listeners.
    pub fn load_plugin(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<Arc<crate::runtime::LoadedPlugin>, crate::runtime::LoadError> {
        self.runtime.load_plugin(name, wasm)
    }

    /// Starts accepting on `listener` for `shared` (on the current tokio runtime).
    pub fn add(&self, listener: TcpListener, shared: Arc<ListenerShared>) -> Result<SocketAddr> {
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let socket = duplicate(&listener)?;
        let admission = Admission::new(&shared.limits);
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            shared.door.clone(),
            self.pool.clone(),
            admission.clone(),
            stop.clone(),
        ));
        let mut all = lock(&self.all);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&shared));
        let previous = lock(&self.running).insert(
            shared.name.to_string(),
            Running {
                shared,
                addr,
                admission,
                stop,
                tasks: vec![task],
                doors: Vec::new(),
                sockets: vec![socket],
            },
        );
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        Ok(addr)
    }

    /// Starts accepting on `listener` for the running listener `name` through another door:
    /// the same tenant (plugin, registry, limits, admission), with the door's framing and TLS.
    pub fn add_door(
        &self,
        name: &str,
        listener: TcpListener,
        door: Arc<Door>,
    ) -> Result<SocketAddr> {
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let socket = duplicate(&listener)?;
        let mut running = lock(&self.running);
        let Some(entry) = running.get_mut(name) else {
            anyhow::bail!("no listener named `{name}` is running");
        };
        entry.tasks.push(tokio::spawn(accept_loop(
            listener,
            entry.shared.clone(),
            door.clone(),
            self.pool.clone(),
            entry.admission.clone(),
            entry.stop.clone(),
        )));
        entry.doors.push((addr, door));
        entry.sockets.push(socket);
        Ok(addr)
    }

    /// Listener `name`'s other doors and their addresses, in the order they were added.
    pub fn doors(&self, name: &str) -> Vec<(SocketAddr, Arc<Door>)> {
        lock(&self.running)
            .get(name)
            .map(|r| r.doors.clone())
            .unwrap_or_default()
    }

    /// The listeners accepting now, with their bound addresses.
    pub fn listeners(&self) -> Vec<(Arc<ListenerShared>, SocketAddr)> {
        let mut list: Vec<_> = lock(&self.running)
            .values()
            .map(|r| (r.shared.clone(), r.addr))
            .collect();
        list.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        list
    }

    /// The listener named `name`, if it is accepting.
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerShared>> {
        lock(&self.running).get(name).map(|r| r.shared.clone())
    }

    /// Clients refused by admission limits on listener `name`.
    pub fn refused(&self, name: &str) -> Option<u64> {
        lock(&self.running).get(name).map(|r| r.admission.refused())
    }

    /// Stops accepting on listener `name` and waits until its socket is closed. With `drain`
    /// its open connections are drained (answered, flushed, closed; dropped after the drain
    /// deadline); without, they carry on until their clients leave.
    pub async fn remove(&self, name: &str, drain: bool) -> Option<Arc<ListenerShared>> {
        let running = lock(&self.running).remove(name)?;
        running.stop.cancel();
        for task in running.tasks {
            if let Err(err) = task.await {
                error!(listener = name, "accept loop ended badly: {err}");
            }
        }
        running.shared.retire();
        if drain {
            running.shared.start_drain();
            let shared = running.shared.clone();
            let deadline = self.drain_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(deadline).await;
                shared.force_close();
            });
        }
        Some(running.shared)
    }

    /// Duplicates of every listening socket, keyed as [`socket_key`] names them, for handing
    /// to a new pier process (which accepts on the same sockets: nothing is closed or rebound).
    pub fn listening_sockets(&self) -> Result<Vec<(String, OwnedFd)>> {
        let running = lock(&self.running);
        let mut sockets = Vec::new();
        for (name, entry) in running.iter() {
            for (index, fd) in entry.sockets.iter().enumerate() {
                let door = index.checked_sub(1);
                let fd = fd
                    .try_clone()
                    .with_context(|| format!("cannot duplicate listener `{name}`'s socket"))?;
                sockets.push((socket_key(name, door), fd));
            }
        }
        Ok(sockets)
    }

    /// Stops accepting on every listener (their sockets close here; another process holding
    /// them keeps accepting) and lets open connections carry on. Used when a new pier process
    /// has taken over; [`Server::shutdown`] later drains what is still open.
    pub async fn stop_accepting(&self) {
        let running: Vec<Running> = lock(&self.running).drain().map(|(_, r)| r).collect();
        for r in &running {
            r.stop.cancel();
        }
        for r in running {
            for task in r.tasks {
                let _ = task.await;
            }
            r.shared.retire();
        }
    }

    /// Connections open on the workers (of every listener, running or not).
    pub fn open_connections(&self) -> usize {
        self.pool.open()
    }

    /// Stops every listener, drains every connection (up to the drain deadline) and stops the
    /// workers.
    pub async fn shutdown(&self) {
        self.stop_accepting().await;
        // A server that never accepted (start-up failed before any listener was added) has
        // nothing to drain: it stops its workers silently, so the start-up error is the only
        // line the user sees.
        let started = !lock(&self.all).is_empty();
        if started {
            info!(
                "shutting down: draining open connections (up to {:?})",
                self.drain_timeout
            );
        }
        let all: Vec<Arc<ListenerShared>> =
            lock(&self.all).iter().filter_map(Weak::upgrade).collect();
        for shared in &all {
            shared.start_drain();
        }
        let pool = self.pool.clone();
        let joined = tokio::task::spawn_blocking(move || pool.join());
        tokio::pin!(joined);
        if tokio::time::timeout(self.drain_timeout, &mut joined)
            .await
            .is_err()
        {
            warn!("drain deadline passed; dropping the remaining connections");
            for shared in &all {
                shared.force_close();
            }
            // Forced connections end at their next await; a guest call is bounded by its call
            // deadline. Should anything still hold a worker, shutdown does not wait for it: the
            // drain timeout is the operator's promise that the process ends.
            match tokio::time::timeout(FORCE_GRACE, &mut joined).await {
                Ok(Err(err)) => error!("worker shutdown failed: {err}"),
                Ok(Ok(())) => {}
                Err(_) => error!(
                    "workers still busy {FORCE_GRACE:?} after the drain deadline; stopping without them"
                ),
            }
        }
        if started {
            info!("shut down");
        }
    }
}

/// How a listening socket is named between pier processes: `listener:NAME` for a listener's own
/// address, `door:NAME:INDEX` for its doors (in config order, from 0). Listener names never hold
/// a `:`, so keys cannot collide.
pub fn socket_key(listener: &str, door: Option<usize>) -> String {
    match door {
        None => format!("listener:{listener}"),
        Some(index) => format!("door:{listener}:{index}"),
    }
}

/// A close-on-exec duplicate of a listening socket.
fn duplicate(listener: &TcpListener) -> Result<OwnedFd> {
    listener
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate a listening socket")
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    door: Arc<Door>,
    pool: Arc<WorkerPool>,
    admission: Arc<Admission>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually fd exhaustion (EMFILE/ENFILE): back off instead of spinning, and
                // keep serving the connections already open.
                warn!(listener = %shared.name, "accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match &door.proxy {
            None => admission.admit(peer.ip()).map(Place::Admitted),
            // Behind a load balancer the per-address limits wait for the PROXY header (read on
            // the connection's task, so a slow header stalls no one else); only the balancers
            // themselves may connect.
            Some(proxy) if proxy.trusts(peer.ip()) => {
                admission.admit_pending().map(Place::AwaitingProxyHeader)
            }
            Some(_) => {
                shared.metrics.proxy_refused(ProxyRefusal::Untrusted.name());
                admission.note_untrusted(peer.ip());
                drop(stream);
                continue;
            }
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                shared.metrics.refused(why.name());
                // A clean close: the client reads end-of-stream at once instead of hanging.
                drop(stream);
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY: {err}");
        }
        match stream.into_std() {
            Ok(stream) => pool.dispatch(Job {
                stream,
                admitted,
                listener: shared.clone(),
                door: door.clone(),
            }),
            Err(err) => warn!("cannot hand a connection to a worker: {err}"),
        }
    }
}
