//! One worker's instance of a plugin: calls with a deadline and a memory cap, and recovery from
//! faults.
//!
//! A fault (trap, deadline overrun, memory refusal) discards the whole store — guest memory may
//! be inconsistent after a trap — and the next call instantiates a fresh one from the plugin's
//! `InstancePre`. Only the caller whose call faulted learns of it; other connections on the
//! worker simply get the new instance on their next frame.

use std::sync::Arc;

use wasmtime::Store;

use super::Runtime;
use super::bindings::{CloseReason, Peer, Plugin, Refusal};
use super::host::{HostState, ListenerContext};
use super::plugin::{LoadedPlugin, OnFrames, OnTimer};
use crate::hub::ConnectionId;
use wasmtime::component::Func;

/// What went wrong in a guest call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The guest trapped (unreachable, out-of-bounds access, a panic, ...).
    Trap,
    /// The call ran past the call deadline.
    Deadline,
    /// The guest tried to grow memory past its limit.
    Memory,
    /// No instance could be created (instantiation itself trapped or the pool is exhausted).
    Instantiate,
}

impl FaultKind {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Deadline => "deadline",
            FaultKind::Memory => "memory",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

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
}

/// An instance's optional exports.
#[derive(Default)]
pub struct Extras {
    /// `timer-handler.on-timer`.
    on_timer: Option<OnTimer>,
    /// `batch-handler.on-frames`, type-checked at load; typed per call because its parameter
    /// type borrows the frames.
    on_frames: Option<Func>,
}

/// The instance of one plugin on one worker thread.
pub struct PluginInstance {
    /// The plugin version this instance runs.
    plugin: Arc<LoadedPlugin>,
    /// The listener it serves.
    ctx: Arc<ListenerContext>,
    /// The runtime, for limits and the engine.
    runtime: Arc<Runtime>,
    /// `"name@version"`, on every log line.
    label: Arc<str>,
    /// The current store and bindings; `None` after a fault until the next call.
    live: Option<Live>,
    /// How many faults this worker's instances had, for logs.
    faults: u64,
    /// Calls made on the current instance, for `recycle_after`.
    calls: u64,
}

impl PluginInstance {
    /// Prepares an instance; the store itself is created on first use.
    pub fn new(
        runtime: Arc<Runtime>,
        plugin: Arc<LoadedPlugin>,
        ctx: Arc<ListenerContext>,
    ) -> Self {
        let label = Arc::from(format!("{}@{}", plugin.name, plugin.version));
        PluginInstance {
            plugin,
            ctx,
            runtime,
            label,
            live: None,
            faults: 0,
            calls: 0,
        }
    }

    /// `name@version` of the plugin.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many faults happened on this worker.
    pub fn faults(&self) -> u64 {
        self.faults
    }

    fn live(&mut self) -> Result<&mut Live, Fault> {
        if self.live.is_none() {
            let data = HostState::new(
                self.ctx.clone(),
                self.label.clone(),
                self.runtime.config().memory_limit,
                self.plugin.optional.on_timer.is_some(),
            );
            let mut store = Store::new(self.runtime.engine(), data);
            store.limiter(|state| &mut state.limiter);
            store.set_epoch_deadline(self.runtime.deadline_ticks());
            let created = instantiate(&self.plugin, &mut store).map_err(|err| {
                self.faults += 1;
                let fault = Fault::new(FaultKind::Instantiate, &err);
                tracing::error!(plugin = %self.label, "cannot instantiate the plugin: {}", fault.detail);
                fault
            })?;
            let (bindings, extras) = created;
            self.live = Some(Live {
                store,
                bindings,
                extras,
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
    /// [`Fault`] and discarding the instance.
    fn call<R>(
        &mut self,
        id: ConnectionId,
        f: impl FnOnce(&Plugin, &Extras, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        let ticks = self.runtime.deadline_ticks();
        let live = self.live()?;
        live.store.data_mut().current = Some(id);
        live.store.set_epoch_deadline(ticks);
        let result = f(&live.bindings, &live.extras, &mut live.store);
        match result {
            Ok(value) => {
                live.store.data_mut().current = None;
                self.calls += 1;
                if self
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
                let kind = if live.store.data().limiter.hit {
                    FaultKind::Memory
                } else if matches!(
                    err.downcast_ref::<wasmtime::Trap>(),
                    Some(wasmtime::Trap::Interrupt)
                ) {
                    FaultKind::Deadline
                } else {
                    FaultKind::Trap
                };
                self.live = None;
                self.calls = 0;
                self.faults += 1;
                let fault = Fault::new(kind, &err);
                tracing::error!(
                    plugin = %self.label,
                    conn = id,
                    fault = kind.name(),
                    faults = self.faults,
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
    pub fn on_open(&mut self, peer: &Peer) -> Result<Result<Option<Vec<u8>>, Refusal>, Fault> {
        self.call(peer.id, |p, _, store| {
            p.pier_plugin_handler().call_on_open(store, peer)
        })
    }

    /// Calls `on-frame`.
    pub fn on_frame(&mut self, id: ConnectionId, frame: &[u8]) -> Result<Option<Vec<u8>>, Fault> {
        self.call(id, |p, _, store| {
            p.pier_plugin_handler().call_on_frame(store, id, frame)
        })
    }

    /// Calls `on-close`. A fault here is logged (by `call`) and otherwise ignored: the
    /// connection is gone either way.
    pub fn on_close(&mut self, id: ConnectionId, reason: CloseReason) {
        let _ = self.call(id, |p, _, store| {
            p.pier_plugin_handler().call_on_close(store, id, reason)
        });
    }

    /// Calls `timer-handler.on-timer`; `Ok(None)` if the plugin does not export it.
    pub fn on_timer(&mut self, id: ConnectionId, timer: u64) -> Result<Option<Vec<u8>>, Fault> {
        self.call(id, |_, extras, store| match &extras.on_timer {
            Some(func) => func.call(store, (id, timer)).map(|(reply,)| reply),
            None => Ok(None),
        })
    }

    /// Whether the plugin takes batches (`batch-handler`).
    pub fn takes_batches(&self) -> bool {
        self.plugin.optional.on_frames.is_some()
    }

    /// Calls `batch-handler.on-frames` with frames laid out back to back in `data` with their
    /// `lengths`; returns the replies' bytes and, per frame, its reply's length or -1.
    pub fn on_frames(
        &mut self,
        id: ConnectionId,
        data: &[u8],
        lengths: &[u32],
    ) -> Result<(Vec<u8>, Vec<i32>), Fault> {
        self.call(id, |_, extras, store| match extras.on_frames {
            Some(func) => {
                // SAFETY: the signature was checked with `get_typed_func` when the plugin was
                // loaded (`Runtime::trial_instantiate`), and this function comes from an
                // instance of that same component.
                let typed: OnFrames<'_> = unsafe { OnFrames::new_unchecked(func) };
                typed
                    .call(store, (id, data, lengths))
                    .map(|(replies,)| replies)
            }
            None => Ok((Vec::new(), Vec::new())),
        })
    }
}

/// Creates an instance of `plugin` in `store`, with its optional exports resolved.
fn instantiate(
    plugin: &LoadedPlugin,
    store: &mut Store<HostState>,
) -> wasmtime::Result<(Plugin, Extras)> {
    let instance = plugin.pre.instance_pre().instantiate(&mut *store)?;
    let bindings = Plugin::new(&mut *store, &instance)?;
    let mut extras = Extras::default();
    if let Some(index) = &plugin.optional.on_timer {
        extras.on_timer = Some(instance.get_typed_func(&mut *store, index)?);
    }
    if let Some(index) = &plugin.optional.on_frames {
        extras.on_frames = instance.get_func(&mut *store, index);
    }
    Ok((bindings, extras))
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
