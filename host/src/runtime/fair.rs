//! How one worker's CPU is shared between the tenants whose connections it serves.
//!
//! Two mechanisms, one for each way a tenant can take a worker:
//!
//! - **Long calls** (a guest that loops, or runs for more than an epoch tick): such a call gives
//!   way at every tick for a time that grows with the number of the tenant's long calls on the
//!   worker ([`LongCall`], [`pause_long_call`]), so however many of them loop, together they
//!   take about a quarter of the worker. While another tenant wants the worker the pause is a
//!   sleep, so the worker is free the moment that tenant's next frame arrives.
//! - **Many short calls** (a timer storm, a frame flood, a cheap `log` or `peers()` per frame):
//!   no single call is long, so the worker counts each tenant's call time in windows of
//!   [`WINDOW`] ([`WorkerCpu`], [`CpuShare`]). A tenant that has used its share of the current
//!   window while another tenant on the worker has been active starts its next call only when
//!   the next window begins. A tenant alone on a worker is never held back: the share only
//!   applies while somebody else wants the worker, so the mechanism costs a busy single-tenant
//!   server nothing.
//!
//! Call time is the wall time of a call minus what it is excused for (giving way, waiting for
//! an upstream): guest code and the host functions it called, as the call deadline counts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Windows are measured on tokio's clock, so tests can run them on paused time.
type Clock = tokio::time::Instant;

/// How much of a worker a tenant's long calls get while others have work: each long call runs
/// one epoch tick, then gives way for `GIVE_WAY_TICKS` × (the tenant's long calls on this
/// worker) ticks, so however many calls of one tenant loop, together they take about a
/// quarter of the worker (1 / (1 + GIVE_WAY_TICKS)) while its other connections and tenants
/// are served. A worker with nothing else to do resumes the call at once (see [`give_way`]).
const GIVE_WAY_TICKS: u32 = 3;

/// The accounting period of [`CpuShare`]: long enough that a tenant's share is not consumed
/// by one ordinary call (a few µs), short enough that a held-back tenant waits at most this
/// long — well under the call deadline and a client's patience.
pub const WINDOW: Duration = Duration::from_millis(10);

/// Marks a call as long-running (it has run for a whole epoch tick) for as long as it lives.
pub(crate) struct LongCall(Arc<CpuShare>);

impl LongCall {
    pub(crate) fn begin(share: Arc<CpuShare>) -> Self {
        share.long_calls.fetch_add(1, Ordering::Relaxed);
        LongCall(share)
    }

    /// How long this call gives way at its next yield.
    pub(crate) fn pause(&self) -> Duration {
        let calls = self.0.long_calls.load(Ordering::Relaxed);
        super::EPOCH_TICK * GIVE_WAY_TICKS * calls.max(1)
    }
}

impl Drop for LongCall {
    fn drop(&mut self) {
        self.0.long_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets the worker's other tasks run for up to `pause`: yields repeatedly while they have work,
/// and stops as soon as a yield comes straight back (nobody else was ready), so a long call on
/// an otherwise idle worker is barely slowed.
pub(crate) async fn give_way(pause: Duration) {
    /// A yield that returns faster than this found no other task ready.
    const NOBODY_ELSE: Duration = Duration::from_micros(20);
    let until = Instant::now() + pause;
    loop {
        let before = Instant::now();
        tokio::task::yield_now().await;
        let now = Instant::now();
        if now >= until || now.saturating_duration_since(before) < NOBODY_ELSE {
            return;
        }
    }
}

/// One worker's view of which tenants want it: the last [`WINDOW`] in which each started a
/// call. One per worker thread; a mutex only because the tenants' [`CpuShare`]s live in stores,
/// which must be `Send` — it is never contended.
pub struct WorkerCpu {
    origin: Clock,
    last_active: Mutex<HashMap<u64, u64>>,
}

impl WorkerCpu {
    /// A worker on which nobody has been active yet.
    pub fn new() -> Arc<Self> {
        Arc::new(WorkerCpu {
            origin: Clock::now(),
            last_active: Mutex::new(HashMap::new()),
        })
    }

    /// The number of the window `now` falls in.
    fn window(&self, now: Clock) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos / WINDOW.as_nanos()).unwrap_or(u64::MAX)
    }

    /// When window `n` begins.
    fn start_of(&self, n: u64) -> Clock {
        self.origin + WINDOW * u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn mark(&self, tenant: u64, window: u64) {
        crate::sys::lock(&self.last_active).insert(tenant, window);
    }

    /// Whether a tenant other than `me` started a call in window `n` or the one before: it has
    /// work now, or had a moment ago.
    fn others_active(&self, me: u64, n: u64) -> bool {
        crate::sys::lock(&self.last_active)
            .iter()
            .any(|(&tenant, &last)| tenant != me && last.saturating_add(1) >= n)
    }

    /// Forgets a tenant that no longer has instances on this worker.
    pub fn forget(&self, tenant: u64) {
        crate::sys::lock(&self.last_active).remove(&tenant);
    }
}

/// One tenant's calls on one worker: how many are long-running now, the call time they have
/// used, and the share of each window they may use while another tenant wants the worker.
/// Shared (by `Arc`) between the tenant's instances on the worker and their stores, where the
/// epoch callback reads it.
pub struct CpuShare {
    tenant: u64,
    worker: Arc<WorkerCpu>,
    /// Call time the tenant may use per window while another tenant is active, in ns.
    budget_ns: u64,
    long_calls: AtomicU32,
    /// Call time used since the share was made, in nanoseconds.
    used_ns: AtomicU64,
    /// The window the figure below belongs to (`u64::MAX`: none yet).
    window: AtomicU64,
    /// `used_ns` when that window began for this tenant.
    used_before: AtomicU64,
}

impl Default for CpuShare {
    /// A tenant alone on a worker of its own: never held back.
    fn default() -> Self {
        CpuShare::new(0, WorkerCpu::new(), 1.0)
    }
}

impl CpuShare {
    /// Tenant `tenant` on `worker`, allowed `share` (0 < share ≤ 1) of each window while
    /// others are active; a share of 1 is never held back.
    pub fn new(tenant: u64, worker: Arc<WorkerCpu>, share: f64) -> Self {
        let budget_ns = if share >= 1.0 {
            u64::MAX
        } else {
            (WINDOW.as_nanos() as f64 * share.max(0.0)) as u64
        };
        CpuShare {
            tenant,
            worker,
            budget_ns,
            long_calls: AtomicU32::new(0),
            used_ns: AtomicU64::new(0),
            window: AtomicU64::new(u64::MAX),
            used_before: AtomicU64::new(0),
        }
    }

    /// Adds one finished call's time.
    pub fn charge(&self, time: Duration) {
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.used_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Whether another tenant has wanted this worker in this window or the last.
    fn contended(&self) -> bool {
        let window = self.worker.window(Clock::now());
        self.worker.others_active(self.tenant, window)
    }

    /// Waits until the tenant may start a call: at once while it is within its share of the
    /// current window or nobody else wants the worker; otherwise until the next window.
    /// Returns whether it was held back.
    pub async fn turn(&self) -> bool {
        let mut held = false;
        loop {
            let window = self.worker.window(Clock::now());
            let used = self.used_ns.load(Ordering::Relaxed);
            if self.window.load(Ordering::Relaxed) != window {
                self.window.store(window, Ordering::Relaxed);
                self.used_before.store(used, Ordering::Relaxed);
                self.worker.mark(self.tenant, window);
            }
            let spent = used.saturating_sub(self.used_before.load(Ordering::Relaxed));
            if spent < self.budget_ns || !self.worker.others_active(self.tenant, window) {
                return held;
            }
            held = true;
            tokio::time::sleep_until(self.worker.start_of(window + 1)).await;
        }
    }
}

/// How a long call gives way at an epoch tick: asleep for `pause` while another tenant wants
/// the worker (so the worker serves it the moment its next frame arrives, instead of finding
/// the run queue empty for an instant and resuming the loop for a whole tick), or by
/// [`give_way`] otherwise (the tenant's own other connections get their turn; alone, the call
/// is barely slowed).
pub(crate) async fn pause_long_call(share: Option<Arc<CpuShare>>, pause: Duration) {
    if share.as_deref().is_some_and(CpuShare::contended) {
        tokio::time::sleep(pause).await;
    } else {
        give_way(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_its_share_waits_only_while_another_tenant_is_active() {
        let worker = WorkerCpu::new();
        let busy = CpuShare::new(1, worker.clone(), 0.25);
        // Alone on the worker: never held back, however much it uses.
        assert!(!busy.turn().await);
        busy.charge(WINDOW);
        assert!(!busy.turn().await);
        assert!(!busy.contended());

        // A neighbour starts a call: now the busy tenant waits for the next window...
        let calm = CpuShare::new(2, worker.clone(), 0.25);
        assert!(!calm.turn().await);
        assert!(busy.contended());
        let before = worker.window(Clock::now());
        assert!(busy.turn().await);
        let after = worker.window(Clock::now());
        assert_eq!(
            after,
            before + 1,
            "held back until the next window, no longer"
        );
        // ...where it has a fresh share.
        busy.charge(WINDOW / 8);
        assert!(!busy.turn().await);

        // The neighbour within its share is never held back.
        calm.charge(WINDOW / 8);
        assert!(!calm.turn().await);

        // Once the neighbour has been quiet for two whole windows, the busy tenant runs freely.
        tokio::time::advance(WINDOW * 2).await;
        assert!(!busy.contended());
        assert!(!busy.turn().await);
        busy.charge(WINDOW);
        assert!(!busy.turn().await);
        // And a tenant that left the worker is forgotten at once.
        assert!(!calm.turn().await);
        worker.forget(2);
        assert!(!busy.turn().await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_all_is_never_held_back() {
        let worker = WorkerCpu::new();
        let all = CpuShare::new(1, worker.clone(), 1.0);
        let other = CpuShare::new(2, worker, 0.25);
        assert!(!other.turn().await);
        all.charge(WINDOW * 100);
        assert!(!all.turn().await);
    }
}
