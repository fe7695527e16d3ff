//! Worker threads: each runs its own single-threaded tokio runtime and owns the instances of
//! each plugin it serves — normally one per listener, a few more only while a slow call is
//! suspended (see [`TenantInstances`]). Connections are pinned to the worker they are handed to,
//! so a plugin call never crosses threads and never waits for a lock.
//!
//! This is the thread-per-core model DESIGN.md measured: the same throughput as an instance per
//! connection at a sixth of the memory, and no per-connection instance ceiling.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admitted;
use crate::connection;
use crate::listener::ListenerShared;
use crate::runtime::fair::{CpuShare, WorkerCpu};
use crate::runtime::{PluginInstance, Runtime};

/// An accepted connection on its way to a worker.
pub struct Job {
    /// The socket, detached from the accepting runtime (it is re-registered on the worker's).
    pub stream: std::net::TcpStream,
    /// The connection's place under the listener's limits; released when the connection ends.
    pub admitted: Admitted,
    /// What the listener serves.
    pub listener: Arc<ListenerShared>,
}

/// Most guest calls of one listener running at once on one worker. Calls normally finish
/// without yielding, so one instance serves them all; only calls that outlast an epoch tick
/// (a slow or looping guest) make others of the same tenant need another instance. The cap
/// bounds the memory a misbehaving tenant can take; beyond it its connections wait their turn,
/// while other tenants' connections are unaffected.
pub const MAX_CONCURRENT_CALLS: usize = 4;

/// The same cap for a listener that grants upstreams: its calls routinely wait for an upstream's
/// reply (the call is suspended, holding its instance), so one worker needs as many instances
/// as it has requests in flight to the upstreams. Each costs the plugin's memory (a proxy
/// plugin: about 1 MiB reserved, a few hundred KiB touched).
pub const MAX_CONCURRENT_UPSTREAM_CALLS: usize = 64;

/// Idle instances a worker keeps for a listener that grants upstreams: enough that steady
/// concurrent requests rarely instantiate, few enough that a burst does not hold many of the
/// process-wide instance slots (`RuntimeConfig::max_instances`) afterwards.
pub const UPSTREAM_IDLE_INSTANCES: usize = 8;

/// One worker's plugin instances, pooled per listener (tenant) it has served.
pub struct Instances {
    runtime: Arc<Runtime>,
    map: RefCell<HashMap<u64, Rc<TenantInstances>>>,
    /// Which tenants want this worker, for their CPU shares.
    cpu: Arc<WorkerCpu>,
}

impl Instances {
    /// No instances yet: they are made on a listener's first connection on this worker.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Instances {
            runtime,
            map: RefCell::new(HashMap::new()),
            cpu: WorkerCpu::new(),
        }
    }

    /// This worker's instances of `listener`'s plugin. Also frees those of listeners that were
    /// removed or restarted and that no connection on this worker uses any more.
    pub fn get(&self, listener: &ListenerShared) -> Rc<TenantInstances> {
        let mut map = self.map.borrow_mut();
        map.retain(|&id, tenant| {
            let unused = tenant.retired() && Rc::strong_count(tenant) == 1;
            if unused {
                self.cpu.forget(id);
            }
            !unused
        });
        map.entry(listener.id)
            .or_insert_with(|| {
                let limits = listener
                    .limits
                    .instance
                    .unwrap_or_else(|| self.runtime.default_limits());
                let concurrency = if listener.ctx.upstreams.is_empty() {
                    MAX_CONCURRENT_CALLS
                } else {
                    MAX_CONCURRENT_UPSTREAM_CALLS
                };
                Rc::new(TenantInstances {
                    retired: listener.retired_flag(),
                    runtime: self.runtime.clone(),
                    slot: listener.slot.clone(),
                    ctx: listener.ctx.clone(),
                    limits,
                    idle: RefCell::new(Vec::new()),
                    share: Arc::new(CpuShare::new(
                        listener.id,
                        self.cpu.clone(),
                        listener.limits.cpu_share,
                    )),
                    held_back: listener.metrics.cpu_held_back.clone(),
                    turns: Semaphore::new(concurrency),
                    keep_idle: if concurrency == MAX_CONCURRENT_CALLS {
                        1
                    } else {
                        UPSTREAM_IDLE_INSTANCES
                    },
                })
            })
            .clone()
    }

    /// Frees the instances of a listener that stopped accepting once no connection uses them,
    /// so removed tenants do not hold pool slots.
    pub fn release_if_unused(&self, listener: &ListenerShared) {
        if !listener.is_retired() {
            return;
        }
        let mut map = self.map.borrow_mut();
        if map
            .get(&listener.id)
            .is_some_and(|i| Rc::strong_count(i) == 1)
        {
            map.remove(&listener.id);
            self.cpu.forget(listener.id);
        }
    }
}

/// One listener's instances on one worker: idle ones ready for the next call, and the turns
/// that cap how many calls run at once.
pub struct TenantInstances {
    /// The listener's "stopped accepting" flag, so the worker can free these once unused.
    retired: Arc<std::sync::atomic::AtomicBool>,
    runtime: Arc<Runtime>,
    slot: Arc<crate::runtime::PluginSlot>,
    ctx: Arc<crate::runtime::host::ListenerContext>,
    limits: crate::runtime::InstanceLimits,
    /// The instance ready for the next call (at most one is kept).
    idle: RefCell<Vec<PluginInstance>>,
    /// The tenant's calls on this worker and its share of the worker's time.
    share: Arc<CpuShare>,
    /// Counts the calls `share` held back.
    held_back: prometheus::IntCounter,
    /// Most idle instances kept: one, or [`UPSTREAM_IDLE_INSTANCES`] for listeners whose calls
    /// wait on upstreams (re-creating one per request would cost an instantiation each).
    keep_idle: usize,
    turns: Semaphore,
}

impl TenantInstances {
    fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Counts a fault found by the connection rather than by a guest call (an oversized reply).
    pub fn record_fault(&self, kind: crate::runtime::FaultKind) -> u64 {
        self.slot.current().metrics.fault(kind);
        self.ctx.faults.record(kind)
    }

    /// An instance for one guest call, waiting if `MAX_CONCURRENT_CALLS` of this tenant are
    /// already running on this worker. Returned to the pool when the lease drops.
    pub async fn lease(&self) -> Lease<'_> {
        // Before the turn, so a tenant held back for its CPU share holds no turn meanwhile.
        if self.share.turn().await {
            self.held_back.inc();
        }
        // The semaphore is never closed, so acquiring cannot fail.
        let turn = self.turns.acquire().await.ok();
        let instance = self.idle.borrow_mut().pop().unwrap_or_else(|| {
            PluginInstance::sharing(
                self.runtime.clone(),
                self.slot.clone(),
                self.ctx.clone(),
                self.limits,
                self.share.clone(),
            )
        });
        Lease {
            pool: self,
            instance: Some(instance),
            _turn: turn,
        }
    }
}

/// An instance lent to one call.
pub struct Lease<'a> {
    pool: &'a TenantInstances,
    instance: Option<PluginInstance>,
    _turn: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = PluginInstance;

    fn deref(&self) -> &PluginInstance {
        // Only `drop` takes it out.
        self.instance.as_ref().expect("leased instance present")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut PluginInstance {
        self.instance.as_mut().expect("leased instance present")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            let mut idle = self.pool.idle.borrow_mut();
            // One idle instance serves every call that does not overlap a slow one; extras made
            // while a call was suspended are dropped as soon as they are not needed.
            if idle.len() < self.pool.keep_idle {
                idle.push(instance);
            }
        }
    }
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Open connections on this worker, for least-loaded dispatch.
    load: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The set of worker threads.
pub struct WorkerPool {
    workers: Vec<Worker>,
    /// Cancelled to make the workers stop taking jobs and finish.
    closed: CancellationToken,
}

impl WorkerPool {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize, runtime: Arc<Runtime>) -> Result<Self> {
        let closed = CancellationToken::new();
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let thread = {
                let load = load.clone();
                let runtime = runtime.clone();
                let closed = closed.clone();
                thread::Builder::new()
                    .name(format!("pier-worker-{index}"))
                    .spawn(move || worker_main(index, rx, load, runtime, closed))
                    .context("cannot start a worker thread")?
            };
            workers.push(Worker {
                jobs: tx,
                load,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(WorkerPool { workers, closed })
    }

    /// Hands a connection to the worker with the fewest open connections.
    pub fn dispatch(&self, job: Job) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.load.fetch_add(1, Ordering::Relaxed);
        if worker.jobs.send(job).is_err() {
            worker.load.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a worker thread has stopped; connection dropped");
        }
    }

    /// Stops handing out work and waits for every worker to finish its connections.
    pub fn join(&self) {
        self.closed.cancel();
        for worker in &self.workers {
            let thread = worker
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// Counts a connection against its worker for as long as it lives.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn worker_main(
    index: usize,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    load: Arc<AtomicUsize>,
    runtime: Arc<Runtime>,
    closed: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(worker = index, "cannot start the worker's runtime: {err}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tracker = TaskTracker::new();
        let instances = Rc::new(Instances::new(runtime));
        loop {
            let job = tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                _ = closed.cancelled() => break,
            };
            let load = load.clone();
            let instances = instances.clone();
            tracker.spawn_local(async move {
                // Decrements even if the task unwinds (tokio contains a task's panic).
                let _load = LoadGuard(load);
                let listener = job.listener.clone();
                let served = connection::serve(job, &instances).await;
                instances.release_if_unused(&listener);
                if !Arc::ptr_eq(&served, &listener) {
                    instances.release_if_unused(&served);
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    });
}
