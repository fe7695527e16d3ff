//! One worker's instance of a plugin: calls with a deadline and a memory cap, and recovery from
//! faults.
//!
//! A fault (trap, deadline overrun, memory refusal) discards the whole store — guest memory may
//! be inconsistent after a trap — and the next call instantiates a fresh one from the plugin's
//! `InstancePre`. Only the caller whose call faulted learns of it; other connections on the
//! worker simply get the new instance on their next frame.
//!
//! Reloads work the same way: before each call the instance checks its listener's
//! [`PluginSlot`]; when a new version was published it snapshots the old instance (if the plugin
//! exports `state-handler`), drops it, and instantiates the new version, restoring the snapshot.

use std::sync::Arc;

use wasmtime::Store;

use super::Runtime;
use super::bindings::{CloseReason, Peer, Plugin, Refusal};
use super::context::ListenerContext;
use super::fair::{CpuShare, LongCall, pause_long_call};
use super::fault::FaultKind;
use super::host::{Excuse, ExcusedTime, HostState};
use super::plugin::{LoadedPlugin, OnFrames, OnTimer, Restore, Snapshot};
use super::slot::{Deployment, PluginSlot};
use crate::limits::InstanceLimits;
use crate::tenant::hub::ConnectionId;
use wasmtime::component::Func;

/// A failed guest call; the instance has already been discarded.
#[derive(Debug)]
pub struct Fault {
    /// What kind of failure.
    pub kind: FaultKind,
    /// The root cause, e.g. "wasm `unreachable` instruction executed".
    pub cause: String,
    /// wasmtime's whole error chain on one line, with the guest backtrace when there is one.
    pub detail: String,
}

struct Live {
    store: Store<HostState>,
    bindings: Plugin,
    /// The optional exports this instance has.
    extras: Extras,
    /// Counts this instance in the listener's `pier_plugin_instances` while it lives.
    _counted: Counted,
}

/// Holds one unit of a gauge for as long as it lives.
struct Counted(prometheus::IntGauge);

impl Counted {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An instance's optional exports.
#[derive(Default)]
pub struct Extras {
    /// `timer-handler.on-timer`.
    on_timer: Option<OnTimer>,
    /// `batch-handler.on-frames`, type-checked at load; typed per call because its parameter
    /// type borrows the frames.
    on_frames: Option<Func>,
    /// `state-handler.snapshot` and `.restore` (typed per call, like `on_frames`).
    state: Option<(Snapshot, Func)>,
}

/// The instance of one listener's plugin on one worker thread.
pub struct PluginInstance {
    /// The plugin version this instance runs.
    deployment: Arc<Deployment>,
    /// Where reloads publish new versions.
    slot: Arc<PluginSlot>,
    /// The listener it serves.
    ctx: Arc<ListenerContext>,
    /// The runtime, for the engine.
    runtime: Arc<Runtime>,
    /// The listener's memory cap and call deadline.
    limits: InstanceLimits,
    /// `"name@version"`, on every log line.
    label: Arc<str>,
    /// The current store and bindings; `None` after a fault until the next call.
    live: Option<Live>,
    /// How many faults this worker's instances had, for logs.
    faults: u64,
    /// Calls made on the current instance, for `recycle_after`.
    calls: u64,
    /// The tenant's calls on this worker, shared by its instances there: how many are long,
    /// the time they used, its share of the worker (see [`CpuShare`]).
    share: Arc<CpuShare>,
}

impl PluginInstance {
    /// Prepares an instance of whatever version `slot` serves; the store itself is created on
    /// first use.
    pub fn new(
        runtime: Arc<Runtime>,
        slot: Arc<PluginSlot>,
        ctx: Arc<ListenerContext>,
        limits: InstanceLimits,
    ) -> Self {
        Self::sharing(runtime, slot, ctx, limits, Arc::default())
    }

    /// Like [`PluginInstance::new`], counting its long calls in `share` with the tenant's other
    /// instances on the same worker.
    pub fn sharing(
        runtime: Arc<Runtime>,
        slot: Arc<PluginSlot>,
        ctx: Arc<ListenerContext>,
        limits: InstanceLimits,
        share: Arc<CpuShare>,
    ) -> Self {
        let deployment = slot.current();
        PluginInstance {
            share,
            label: label(&deployment.plugin),
            deployment,
            slot,
            ctx,
            runtime,
            limits,
            live: None,
            faults: 0,
            calls: 0,
        }
    }

    /// A fixed plugin with the runtime's default limits, for embedders and tests that never
    /// reload.
    pub fn fixed(
        runtime: Arc<Runtime>,
        plugin: Arc<LoadedPlugin>,
        ctx: Arc<ListenerContext>,
    ) -> Self {
        let limits = runtime.default_limits();
        let slot = Arc::new(PluginSlot::new(
            plugin,
            Default::default(),
            ctx.metrics.clone(),
        ));
        Self::new(runtime, slot, ctx, limits)
    }

    /// The plugin version this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.deployment.plugin
    }

    /// Moves to the version the slot serves if a reload published a newer one, carrying the
    /// guest's state across when both versions export `state-handler`. Every call does this
    /// first; callers that decide by the version's exports (`takes_batches`) call it before.
    pub async fn follow_reload(&mut self) {
        if self.slot.generation() == self.deployment.generation {
            return;
        }
        let started = std::time::Instant::now();
        let next = self.slot.current();
        let snapshot = match self.live.as_mut() {
            Some(live) => match take_snapshot(live, &self.label).await {
                Ok(snapshot) => snapshot,
                Err(kind) => {
                    // Counted under the outgoing version, whose export failed.
                    self.ctx.faults.record(kind);
                    self.deployment.metrics.fault(kind.name());
                    None
                }
            },
            None => None,
        };
        let from = std::mem::replace(&mut self.label, label(&next.plugin));
        self.live = None;
        self.calls = 0;
        self.deployment = next;
        let state_bytes = snapshot.as_ref().map(Vec::len);
        let mut restored = false;
        if let Some(state) = snapshot {
            if self.deployment.plugin.optional.state.is_none() {
                tracing::warn!(plugin = %self.label, "the new version does not export state-handler; guest state dropped");
            } else {
                let label = self.label.clone();
                if let Ok(live) = self.live().await {
                    let outcome = restore_snapshot(live, &label, &state).await;
                    restored = outcome.is_ok();
                    if let Err(kind) = outcome {
                        self.ctx.faults.record(kind);
                        self.deployment.metrics.fault(kind.name());
                        // A failed restore may leave guest memory half-written: start clean.
                        self.live = None;
                    }
                }
            }
        }
        tracing::info!(
            listener = %self.ctx.name,
            from = %from,
            to = %self.label,
            state_bytes,
            restored,
            switched_in = ?started.elapsed(),
            "worker moved to the new plugin version"
        );
    }

    /// `name@version` of the plugin.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many faults happened on this worker.
    pub fn faults(&self) -> u64 {
        self.faults
    }

    async fn live(&mut self) -> Result<&mut Live, Fault> {
        if self.live.is_none() {
            let plugin = &self.deployment.plugin;
            let data = HostState::new(
                self.ctx.clone(),
                self.label.clone(),
                self.limits.memory,
                plugin.optional.on_timer.is_some(),
                self.deployment.config.clone(),
            );
            let mut store = Store::new(self.runtime.engine(), data);
            store.limiter(|state| &mut state.limiter);
            time_slice(&mut store, self.limits.call_deadline);
            let created = instantiate(plugin, &mut store).await.map_err(|err| {
                self.faults += 1;
                self.ctx.faults.record(FaultKind::Instantiate);
                self.deployment.metrics.fault(FaultKind::Instantiate.name());
                let fault = Fault::new(FaultKind::Instantiate, &err);
                tracing::error!(plugin = %self.label, "cannot instantiate the plugin: {}", fault.detail);
                fault
            })?;
            let (bindings, extras) = created;
            let limiter = &mut store.data_mut().limiter;
            limiter.baseline = limiter.largest;
            self.live = Some(Live {
                store,
                bindings,
                extras,
                _counted: Counted::new(&self.ctx.metrics.instances),
            });
        }
        // Just set above when it was empty.
        self.live.as_mut().ok_or_else(|| Fault {
            kind: FaultKind::Instantiate,
            cause: "no instance".into(),
            detail: String::new(),
        })
    }

    /// Runs one guest call for connection `id` under the deadline, turning a failure into a
    /// [`Fault`] and discarding the instance. The call runs on a wasmtime fiber and yields to
    /// the worker's other connections every epoch tick (see [`time_slice`]).
    async fn call<R>(
        &mut self,
        id: ConnectionId,
        f: impl AsyncFnOnce(&Plugin, &Extras, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        self.follow_reload().await;
        let deadline = self.limits.call_deadline;
        let share = self.share.clone();
        let live = self.live().await?;
        live.store.data_mut().begin_call(id);
        live.store.data_mut().share = Some(share.clone());
        live.store.set_epoch_deadline(1);
        let started = std::time::Instant::now();
        let excused = live.store.data().excused.clone();
        let call = f(&live.bindings, &live.extras, &mut live.store);
        let result = within_deadline(call, started, deadline, &excused)
            .await
            .unwrap_or_else(|| Err(wasmtime::Error::new(WaitedPastDeadline)));
        // No longer a long call of its tenant, whatever happens next.
        live.store.data_mut().long_call = None;
        let took = started.elapsed();
        share.charge(took.saturating_sub(excused.so_far(started + took)));
        let elapsed = took.as_secs_f64();
        match result {
            Ok(value) => {
                live.store.data_mut().current = None;
                let nearly_full = live.store.data().limiter.nearly_full();
                let largest = live.store.data().limiter.largest;
                self.deployment.metrics.call_duration.observe(elapsed);
                self.calls += 1;
                if nearly_full {
                    // Guests whose heap only grows (fragmentation, a runtime that leaks a little
                    // per call) would otherwise end in a memory fault that costs a connection;
                    // a fresh instance at this frame boundary costs nobody anything.
                    tracing::info!(
                        listener = %self.ctx.name,
                        plugin = %self.label,
                        calls = self.calls,
                        memory = %bytesize::ByteSize(largest as u64),
                        "instance memory nearly at its limit; replaced at this frame boundary"
                    );
                }
                if nearly_full
                    || self
                        .runtime
                        .config()
                        .recycle_after
                        .is_some_and(|n| self.calls >= n)
                {
                    self.live = None;
                    self.calls = 0;
                }
                Ok(value)
            }
            Err(err) => {
                let kind = classify(&err, live.store.data());
                self.live = None;
                self.calls = 0;
                self.faults += 1;
                self.deployment.metrics.call_duration.observe(elapsed);
                let fault = Fault::new(kind, &err);
                let total = self.ctx.faults.record(kind);
                self.deployment.metrics.fault(kind.name());
                tracing::error!(
                    listener = %self.ctx.name,
                    plugin = %self.label,
                    conn = id,
                    fault = kind.name(),
                    faults = total,
                    "plugin fault ({}: {}); instance replaced, closing only this connection",
                    kind.name(),
                    fault.cause
                );
                tracing::debug!(plugin = %self.label, conn = id, "fault detail: {}", fault.detail);
                Err(fault)
            }
        }
    }

    /// Calls `on-open`.
    pub async fn on_open(
        &mut self,
        peer: &Peer,
    ) -> Result<Result<Option<Vec<u8>>, Refusal>, Fault> {
        self.call(peer.id, async |p, _, store| {
            p.pier_plugin_handler().call_on_open(store, peer).await
        })
        .await
    }

    /// Calls `on-frame`.
    pub async fn on_frame(
        &mut self,
        id: ConnectionId,
        frame: &[u8],
    ) -> Result<Option<Vec<u8>>, Fault> {
        self.call(id, async |p, _, store| {
            p.pier_plugin_handler()
                .call_on_frame(store, id, frame)
                .await
        })
        .await
    }

    /// Calls `on-close`. A fault here is logged (by `call`) and otherwise ignored: the
    /// connection is gone either way.
    pub async fn on_close(&mut self, id: ConnectionId, reason: CloseReason) {
        let _ = self
            .call(id, async |p, _, store| {
                p.pier_plugin_handler()
                    .call_on_close(store, id, reason)
                    .await
            })
            .await;
    }

    /// Calls `timer-handler.on-timer`; `Ok(None)` if the plugin does not export it.
    pub async fn on_timer(
        &mut self,
        id: ConnectionId,
        timer: u64,
    ) -> Result<Option<Vec<u8>>, Fault> {
        self.call(id, async |_, extras, store| match &extras.on_timer {
            Some(func) => func
                .call_async(store, (id, timer))
                .await
                .map(|(reply,)| reply),
            None => Ok(None),
        })
        .await
    }

    /// Whether the plugin takes batches (`batch-handler`).
    pub fn takes_batches(&self) -> bool {
        self.deployment.plugin.optional.on_frames.is_some()
    }

    /// Calls `batch-handler.on-frames` with frames laid out back to back in `data` with their
    /// `lengths`; returns the replies' bytes and, per frame, its reply's length or -1.
    pub async fn on_frames(
        &mut self,
        id: ConnectionId,
        data: &[u8],
        lengths: &[u32],
    ) -> Result<(Vec<u8>, Vec<i32>), Fault> {
        self.call(id, async |_, extras, store| match extras.on_frames {
            Some(func) => {
                // SAFETY: the signature was checked with `get_typed_func` when the plugin was
                // loaded (`Runtime::trial_instantiate`), and this function comes from an
                // instance of that same component.
                let typed: OnFrames<'_> = unsafe { OnFrames::new_unchecked(func) };
                typed
                    .call_async(store, (id, data, lengths))
                    .await
                    .map(|(replies,)| replies)
            }
            None => Ok((Vec::new(), Vec::new())),
        })
        .await
    }
}

/// Makes the guest share its worker. The epoch advances every [`EPOCH_TICK`] and the store's
/// deadline is always the next tick, so this callback runs once per tick a call spends running
/// guest code (time it spends suspended does not count). After one whole tick the call yields at
/// every tick, so the worker's other connections (of every tenant) run before it continues;
/// once it has run for `deadline` it is interrupted (a `Trap::Interrupt`, reported as a
/// deadline fault). Calls shorter than a tick — nearly all — never yield, so they never need a
/// second instance of the plugin.
///
/// [`EPOCH_TICK`]: super::EPOCH_TICK
pub(crate) fn time_slice(store: &mut Store<HostState>, deadline: std::time::Duration) {
    let max_ticks = super::deadline_ticks(deadline);
    store.epoch_deadline_callback(move |mut ctx| {
        let state = ctx.data_mut();
        // Wall time used, minus what the call is excused for: host functions the guest called
        // (an O(n) `peers()`, a log write) are charged like guest code. The epoch only says
        // when to look, and a look can come late, after a long host call.
        let now = std::time::Instant::now();
        let charged = now
            .saturating_duration_since(state.call_started)
            .saturating_sub(state.excused.so_far(now));
        if charged >= deadline {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        if std::mem::take(&mut state.resumed_from_wait) {
            // The epoch moved while the call waited for an upstream, not while it ran.
            return Ok(wasmtime::UpdateDeadline::Continue(1));
        }
        state.call_ticks += 1;
        let ticks = state.call_ticks;
        if ticks >= max_ticks {
            Ok(wasmtime::UpdateDeadline::Interrupt)
        } else if ticks >= 2 {
            // Yielding through tokio lets the worker poll its sockets before resuming this
            // task; a plain yield would be re-polled at once, dozens of times before any I/O.
            let excuse = Excuse::begin(&state.excused);
            let share = state.share.clone();
            let pause = match share.clone() {
                Some(share) => state
                    .long_call
                    .get_or_insert_with(|| LongCall::begin(share))
                    .pause(),
                None => std::time::Duration::ZERO,
            };
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    pause_long_call(share, pause).await;
                    // Time spent waiting for the worker's other connections is not this call's.
                    drop(excuse);
                }),
            ))
        } else {
            Ok(wasmtime::UpdateDeadline::Continue(1))
        }
    });
}

/// A call that spent its deadline suspended in a host function (a WASI sleep or poll): the
/// epoch only counts time spent running guest code, so without this a guest could hold its
/// instance, its connection and the shutdown forever by sleeping.
#[derive(Debug, thiserror::Error)]
#[error("the call waited in a host function past its deadline")]
pub struct WaitedPastDeadline;

/// Runs a guest call, dropping it — which unwinds the guest, like an interrupt — once the wall
/// time it has used, minus the waits it is excused for (yielding to other connections, an
/// upstream request), reaches `deadline`. Running guest code is also bounded by epoch ticks
/// (`time_slice`); this bound is for the time the call spends suspended. Calls that finish
/// without suspending, nearly all of them, never create the timer. `None` if it was dropped.
async fn within_deadline<F: std::future::Future>(
    call: F,
    started: std::time::Instant,
    deadline: std::time::Duration,
    excused: &ExcusedTime,
) -> Option<F::Output> {
    use std::task::Poll;
    let mut call = std::pin::pin!(call);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(value) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        let timer = timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until((started + deadline).into())));
        while timer.as_mut().poll(cx).is_ready() {
            let now = std::time::Instant::now();
            let charged = now
                .saturating_duration_since(started)
                .saturating_sub(excused.so_far(now));
            if charged >= deadline {
                return Poll::Ready(None);
            }
            timer.as_mut().reset((now + (deadline - charged)).into());
        }
        Poll::Pending
    })
    .await
}

/// What kind of fault a failed call was.
fn classify(err: &wasmtime::Error, state: &HostState) -> FaultKind {
    if state.limiter.hit {
        FaultKind::Memory
    } else if matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) || err.is::<WaitedPastDeadline>()
    {
        if state.refused_sends > 0 {
            FaultKind::SendFlood
        } else {
            FaultKind::Deadline
        }
    } else {
        FaultKind::Trap
    }
}

/// Creates an instance of `plugin` in `store`, with its optional exports resolved.
async fn instantiate(
    plugin: &LoadedPlugin,
    store: &mut Store<HostState>,
) -> wasmtime::Result<(Plugin, Extras)> {
    store.data_mut().call_ticks = 0;
    store.set_epoch_deadline(1);
    let instance = plugin
        .pre
        .instance_pre()
        .instantiate_async(&mut *store)
        .await?;
    let bindings = Plugin::new(&mut *store, &instance)?;
    let mut extras = Extras::default();
    if let Some(index) = &plugin.optional.on_timer {
        extras.on_timer = Some(instance.get_typed_func(&mut *store, index)?);
    }
    if let Some(index) = &plugin.optional.on_frames {
        extras.on_frames = instance.get_func(&mut *store, index);
    }
    if let Some((snapshot, restore)) = &plugin.optional.state {
        let snapshot = instance.get_typed_func(&mut *store, snapshot)?;
        if let Some(restore) = instance.get_func(&mut *store, restore) {
            extras.state = Some((snapshot, restore));
        }
    }
    Ok((bindings, extras))
}

/// `name@version`, on every log line about an instance.
fn label(plugin: &LoadedPlugin) -> Arc<str> {
    Arc::from(format!("{}@{}", plugin.name, plugin.version))
}

/// Asks the outgoing version for its state; `None` if it keeps none, the fault's kind if the
/// call fails (logged).
async fn take_snapshot(live: &mut Live, label: &str) -> Result<Option<Vec<u8>>, FaultKind> {
    let Some((snapshot, _)) = live.extras.state.as_ref() else {
        return Ok(None);
    };
    live.store.data_mut().begin_call(0);
    live.store.set_epoch_deadline(1);
    match snapshot.call_async(&mut live.store, ()).await {
        Ok((state,)) => Ok(Some(state)),
        Err(err) => {
            let kind = classify(&err, live.store.data());
            tracing::error!(plugin = %label, fault = kind.name(), "state-handler.snapshot failed; the new version starts empty: {}", one_line(&err));
            Err(kind)
        }
    }
}

/// Hands the previous version's state to a fresh instance of the new one.
async fn restore_snapshot(live: &mut Live, label: &str, state: &[u8]) -> Result<(), FaultKind> {
    let Some((_, restore)) = live.extras.state.as_ref() else {
        return Ok(());
    };
    // SAFETY: the signature was checked with `get_typed_func` when the plugin was loaded
    // (`Runtime::trial_instantiate`), and this function comes from an instance of it.
    let typed: Restore<'_> = unsafe { Restore::new_unchecked(*restore) };
    live.store.data_mut().begin_call(0);
    live.store.set_epoch_deadline(1);
    match typed.call_async(&mut live.store, (state,)).await {
        Ok(()) => Ok(()),
        Err(err) => {
            let kind = classify(&err, live.store.data());
            tracing::error!(plugin = %label, fault = kind.name(), "state-handler.restore failed; the new version starts empty: {}", one_line(&err));
            Err(kind)
        }
    }
}

impl Fault {
    fn new(kind: FaultKind, err: &wasmtime::Error) -> Self {
        Fault {
            kind,
            cause: err.root_cause().to_string(),
            detail: one_line(err),
        }
    }
}

/// wasmtime's error chain (including the guest backtrace) on one line, so a fault is one log line.
fn one_line(err: &wasmtime::Error) -> String {
    format!("{err:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}
