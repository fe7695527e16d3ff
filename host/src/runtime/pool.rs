//! One worker's plugin instances, pooled per tenant: idle ones ready for the next call, a cap
//! on how many calls of one tenant run at once, and the tenant's share of the worker's CPU
//! (see [`fair`](super::fair)). The worker owns one [`Instances`]; each connection leases an
//! instance for each call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use super::context::ListenerContext;
use super::fair::{CpuShare, WorkerCpu};
use super::{FaultKind, PluginInstance, PluginSlot, Runtime};
use crate::limits::InstanceLimits;

/// What the pool needs to know of a tenant to make its instances (a listener hands out one
/// with `ListenerShared::tenant`).
#[derive(Clone, Copy)]
pub struct Tenant<'a> {
    /// Process-unique id of the tenant (its listener).
    pub id: u64,
    /// Set when the tenant stopped accepting, so its instances can be freed once unused.
    pub retired: &'a Arc<AtomicBool>,
    /// Where the tenant's plugin versions are published.
    pub slot: &'a Arc<PluginSlot>,
    /// What the tenant gives its instances.
    pub ctx: &'a Arc<ListenerContext>,
    /// Memory and deadline per instance; `None`: the runtime's defaults.
    pub limits: Option<InstanceLimits>,
    /// Its share of a worker's call time while others want it.
    pub cpu_share: f64,
    /// Counts its calls held back for that share.
    pub held_back: &'a prometheus::IntCounter,
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

    /// This worker's instances of `tenant`'s plugin. Also frees those of tenants that were
    /// removed or restarted and that no connection on this worker uses any more.
    pub fn get(&self, tenant: Tenant<'_>) -> Rc<TenantInstances> {
        let mut map = self.map.borrow_mut();
        map.retain(|&id, tenant| {
            let unused = tenant.retired() && Rc::strong_count(tenant) == 1;
            if unused {
                self.cpu.forget(id);
            }
            !unused
        });
        map.entry(tenant.id)
            .or_insert_with(|| {
                let limits = tenant
                    .limits
                    .unwrap_or_else(|| self.runtime.default_limits());
                let concurrency = if tenant.ctx.upstreams.is_empty() {
                    MAX_CONCURRENT_CALLS
                } else {
                    MAX_CONCURRENT_UPSTREAM_CALLS
                };
                Rc::new(TenantInstances {
                    retired: tenant.retired.clone(),
                    runtime: self.runtime.clone(),
                    slot: tenant.slot.clone(),
                    ctx: tenant.ctx.clone(),
                    limits,
                    idle: RefCell::new(Vec::new()),
                    share: Arc::new(CpuShare::new(tenant.id, self.cpu.clone(), tenant.cpu_share)),
                    held_back: tenant.held_back.clone(),
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

    /// Frees the instances of tenant `id` once it stopped accepting (`retired`) and no
    /// connection uses them, so removed tenants do not hold pool slots.
    pub fn release_if_unused(&self, id: u64, retired: bool) {
        if !retired {
            return;
        }
        let mut map = self.map.borrow_mut();
        if map.get(&id).is_some_and(|i| Rc::strong_count(i) == 1) {
            map.remove(&id);
            self.cpu.forget(id);
        }
    }
}

/// One listener's instances on one worker: idle ones ready for the next call, and the turns
/// that cap how many calls run at once.
pub struct TenantInstances {
    /// The listener's "stopped accepting" flag, so the worker can free these once unused.
    retired: Arc<std::sync::atomic::AtomicBool>,
    runtime: Arc<Runtime>,
    slot: Arc<PluginSlot>,
    ctx: Arc<ListenerContext>,
    limits: InstanceLimits,
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
    pub fn record_fault(&self, kind: FaultKind) -> u64 {
        self.slot.current().metrics.fault(kind.name());
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
