//! The store data of a plugin instance, and the host side of the interfaces it imports: one file
//! per WIT interface, each holding its `Host` impl, its error mapping and its linker
//! registration ([`add_to_linker`]).
//!
//! Every host function validates what the guest passed and answers with the WIT's typed error;
//! none of them can panic or block, so a guest can never take a worker thread down through them.

mod attributes;
mod clock;
mod config;
mod connections;
mod groups;
mod log;
mod stats;
mod timers;
mod upstream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::bindings::pier::plugin::types;
use super::bindings::{Peer, TlsPeer};
use super::context::{ListenerContext, PluginConfig};
use crate::tenant::hub::{ConnectionId, PeerInfo};
use std::time::Duration;

/// The data of one instance's `Store`.
pub struct HostState {
    /// The listener the instance serves.
    pub(crate) ctx: Arc<ListenerContext>,
    /// The plugin's name and version, for log lines.
    pub(crate) plugin: Arc<str>,
    /// The connection whose callback is running, so guest log lines can name it.
    pub(crate) current: Option<ConnectionId>,
    /// Enforces the memory cap and remembers whether the guest hit it, which is how a memory
    /// fault is told apart from other traps.
    pub(crate) limiter: MemoryLimiter,
    /// Whether the plugin exports `timer-handler`; without it `timers.start` fails.
    pub(crate) has_timer_handler: bool,
    /// The operator's `plugin_config` for this version.
    pub(crate) config: Arc<PluginConfig>,
    /// Frames refused with `queue-full` during the running call: a call that overruns its
    /// deadline after the host started refusing its sends was flooding, not computing.
    pub(crate) refused_sends: u64,
    /// Epoch ticks the running call (or instantiation) has spent running guest code — not
    /// waiting while it yielded to other connections — for the call deadline.
    pub(crate) call_ticks: u64,
    /// Set when an upstream request resumed the call: the epoch tick that passed while the
    /// call waited is not charged against its deadline (see `instance::time_slice`).
    pub(crate) resumed_from_wait: bool,
    /// Time the running call spent suspended for reasons that do not count toward its
    /// deadline (yielding to other connections, waiting for an upstream); every other wait in
    /// a host function does (`instance::Deadline`).
    pub(crate) excused: Arc<ExcusedTime>,
    /// When the running call started, for the wall-clock part of its deadline.
    pub(crate) call_started: std::time::Instant,
    /// The tenant's long-call count on this worker, for time slicing (`instance::time_slice`).
    pub(crate) share: Option<Arc<super::fair::CpuShare>>,
    /// Set while the running call counts as one of its tenant's long calls.
    pub(crate) long_call: Option<super::fair::LongCall>,
    /// Set for the scratch instance that checks a plugin at load: its guest logs and output
    /// are dropped, so loading a plugin does not look like serving one.
    pub(crate) quiet: bool,
    /// The guest's deny-by-default WASI, built on its first WASI call (`runtime::wasi`).
    wasi: Option<wasmtime_wasi::WasiCtx>,
    /// Handles of WASI resources (streams, pollables) the guest holds.
    table: wasmtime_wasi::ResourceTable,
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        let (plugin, quiet) = (&self.plugin, self.quiet);
        let ctx = &self.ctx;
        wasmtime_wasi::WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| super::wasi::context(plugin.clone(), ctx, quiet)),
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// Fresh state for a new instance.
    pub fn new(
        ctx: Arc<ListenerContext>,
        plugin: Arc<str>,
        memory_limit: usize,
        has_timer_handler: bool,
        config: Arc<PluginConfig>,
    ) -> Self {
        HostState {
            ctx,
            plugin,
            current: None,
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: false,
                largest: 0,
                baseline: 0,
            },
            has_timer_handler,
            config,
            refused_sends: 0,
            call_ticks: 0,
            resumed_from_wait: false,
            excused: Arc::new(ExcusedTime::default()),
            call_started: std::time::Instant::now(),
            share: None,
            long_call: None,
            quiet: false,
            wasi: None,
            table: wasmtime_wasi::ResourceTable::new(),
        }
    }

    /// Resets the per-call fields before a guest call for connection `id`.
    pub(crate) fn begin_call(&mut self, id: ConnectionId) {
        self.current = Some(id);
        self.refused_sends = 0;
        self.call_ticks = 0;
        self.resumed_from_wait = false;
        self.excused.reset();
        self.call_started = std::time::Instant::now();
        self.long_call = None;
    }
}

/// Wall-clock time a guest call is suspended without being charged for it, shared between the
/// store (which marks the waits) and the future that enforces the call deadline (which reads
/// them). Atomics because the store data must be `Send`; there is never contention.
#[derive(Debug)]
pub struct ExcusedTime {
    /// The reference point of the offsets below.
    origin: std::time::Instant,
    /// Nanoseconds of finished excused waits in this call.
    total: std::sync::atomic::AtomicU64,
    /// 1 + the offset (ns from `origin`) where the excused wait in progress began; 0 if none.
    since: std::sync::atomic::AtomicU64,
}

impl Default for ExcusedTime {
    fn default() -> Self {
        ExcusedTime {
            origin: std::time::Instant::now(),
            total: Default::default(),
            since: Default::default(),
        }
    }
}

impl ExcusedTime {
    fn offset(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn reset(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.total.store(0, Relaxed);
        self.since.store(0, Relaxed);
    }

    /// Marks the start of a wait that is not charged to the call.
    pub(crate) fn enter(&self) {
        let now = self.offset(std::time::Instant::now());
        self.since
            .store(now.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks its end.
    pub(crate) fn leave(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let since = self.since.swap(0, Relaxed);
        if since > 0 {
            let now = self.offset(std::time::Instant::now());
            self.total.fetch_add(now.saturating_sub(since - 1), Relaxed);
        }
    }

    /// Excused time so far, the wait in progress included.
    pub(crate) fn so_far(&self, now: std::time::Instant) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let mut nanos = self.total.load(Relaxed);
        let since = self.since.load(Relaxed);
        if since > 0 {
            nanos = nanos.saturating_add(self.offset(now).saturating_sub(since - 1));
        }
        Duration::from_nanos(nanos)
    }
}

/// Marks an excused wait for as long as it lives, so a wait whose future is dropped midway
/// still ends.
pub(crate) struct Excuse(pub(crate) Arc<ExcusedTime>);

impl Excuse {
    pub(crate) fn begin(time: &Arc<ExcusedTime>) -> Self {
        time.enter();
        Excuse(time.clone())
    }
}

impl Drop for Excuse {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A `ResourceLimiter` that caps linear memory and records refusals.
pub struct MemoryLimiter {
    /// The most bytes a linear memory may have.
    limit: usize,
    /// Set when a growth was refused.
    pub(crate) hit: bool,
    /// The largest size any of the instance's memories has grown to.
    pub(crate) largest: usize,
    /// `largest` right after instantiation: a plugin that starts big is not "growing".
    pub(crate) baseline: usize,
}

impl MemoryLimiter {
    /// Whether the instance's memory has grown to within an eighth of the limit: time to
    /// replace it at a frame boundary, before a growth is refused in the middle of a call.
    pub(crate) fn nearly_full(&self) -> bool {
        self.largest > self.baseline && self.largest >= self.limit - self.limit / 8
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.largest = self.largest.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real plugin.
        Ok(desired <= 1_000_000)
    }
}

/// Converts the registry's view of a peer into the WIT record.
pub fn peer_record(info: &PeerInfo) -> Peer {
    let connected_at_ms = info
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Peer {
        id: info.id,
        remote_addr: info.remote_addr.clone(),
        local_addr: info.local_addr.clone(),
        listener: info.listener.to_string(),
        tls: info.tls.as_ref().map(|t| TlsPeer {
            server_name: t.server_name.clone(),
            alpn: t.alpn.clone(),
            client_subject: t.client_subject.clone(),
            client_sans: t.client_sans.clone(),
            client_fingerprint: t.client_fingerprint.clone(),
        }),
        connected_at_ms,
    }
}

/// Milliseconds since the Unix epoch, for records built now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl types::Host for HostState {}

/// Registers every interface a plugin may import; what a plugin *may* use is decided per
/// listener when it is loaded (`plugin`: worlds per granted capability), while the linker
/// offers all of them.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    type Data = wasmtime::component::HasSelf<HostState>;
    types::add_to_linker::<HostState, Data>(linker, |s| s)?;
    connections::add_to_linker(linker)?;
    attributes::add_to_linker(linker)?;
    groups::add_to_linker(linker)?;
    stats::add_to_linker(linker)?;
    clock::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    upstream::add_to_linker(linker)
}
