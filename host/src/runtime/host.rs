//! The store data of a plugin instance and the host side of the interfaces it imports.
//!
//! Every host function validates what the guest passed and answers with the WIT's typed error;
//! none of them can panic or block, so a guest can never take a worker thread down through them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::bindings::pier::plugin::{
    attributes, clock, config, connections, groups, log, stats, timers, types, upstream,
};
use super::bindings::{Level, Peer, SendError, TlsPeer};
use super::context::{ListenerContext, PluginConfig};
use crate::hub::{self, ConnectionId, PeerInfo};
use std::time::Duration;

/// Longest guest log message kept; the rest is cut so a guest cannot flood the log with one call.
const MAX_LOG_MESSAGE: usize = 4096;

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

fn send_error(err: hub::SendError) -> SendError {
    match err {
        hub::SendError::UnknownConnection => SendError::UnknownConnection,
        hub::SendError::Closing => SendError::Closing,
        hub::SendError::FrameTooLarge => SendError::FrameTooLarge,
        hub::SendError::QueueFull => SendError::QueueFull,
    }
}

impl types::Host for HostState {}

impl connections::Host for HostState {
    fn send(&mut self, to: ConnectionId, frame: Vec<u8>) -> Result<(), SendError> {
        let sent = self.ctx.hub.send(to, Bytes::from(frame));
        if sent == Err(hub::SendError::QueueFull) {
            self.refused_sends += 1;
        }
        sent.map_err(send_error)
    }

    fn broadcast(&mut self, frame: Vec<u8>, except: Option<ConnectionId>) -> u32 {
        self.ctx.hub.broadcast(Bytes::from(frame), except)
    }

    fn close(&mut self, id: ConnectionId) -> bool {
        self.ctx.hub.close(id)
    }

    fn peers(&mut self) -> Vec<Peer> {
        self.ctx.hub.peers().iter().map(peer_record).collect()
    }

    fn lookup(&mut self, id: ConnectionId) -> Option<Peer> {
        self.ctx.hub.lookup(id).as_ref().map(peer_record)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

fn connection_stats(s: &hub::ConnectionStats) -> stats::ConnectionStats {
    stats::ConnectionStats {
        peer: peer_record(&s.peer),
        age_ms: millis(s.age),
        frames_in: s.frames_in,
        frames_out: s.frames_out,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    }
}

impl attributes::Host for HostState {
    fn set(
        &mut self,
        id: ConnectionId,
        key: String,
        value: String,
    ) -> Result<(), attributes::AttributeError> {
        use attributes::AttributeError as E;
        self.ctx
            .hub
            .set_attribute(id, &key, value)
            .map_err(|e| match e {
                hub::AttributeError::UnknownConnection => E::UnknownConnection,
                hub::AttributeError::BadKey => E::BadKey,
                hub::AttributeError::ValueTooLong => E::ValueTooLong,
                hub::AttributeError::TooMany => E::TooMany,
            })
    }

    fn get(&mut self, id: ConnectionId, key: String) -> Option<String> {
        self.ctx.hub.attribute(id, &key)
    }

    fn remove(&mut self, id: ConnectionId, key: String) -> Option<String> {
        self.ctx.hub.remove_attribute(id, &key)
    }

    fn all(&mut self, id: ConnectionId) -> Vec<(String, String)> {
        self.ctx.hub.attributes(id)
    }

    fn find(&mut self, key: String, value: String) -> Vec<ConnectionId> {
        self.ctx.hub.find_attribute(&key, &value)
    }
}

impl groups::Host for HostState {
    fn join(&mut self, id: ConnectionId, group: String) -> Result<(), groups::GroupError> {
        use groups::GroupError as E;
        self.ctx.hub.join(id, &group).map_err(|e| match e {
            hub::GroupError::UnknownConnection => E::UnknownConnection,
            hub::GroupError::BadName => E::BadName,
            hub::GroupError::TooMany => E::TooMany,
        })
    }

    fn leave(&mut self, id: ConnectionId, group: String) -> bool {
        self.ctx.hub.leave(id, &group)
    }

    fn members(&mut self, group: String) -> Vec<ConnectionId> {
        self.ctx.hub.members(&group)
    }

    fn groups_of(&mut self, id: ConnectionId) -> Vec<String> {
        self.ctx.hub.groups_of(id)
    }

    fn send(&mut self, group: String, frame: Vec<u8>, except: Option<ConnectionId>) -> u32 {
        self.ctx.hub.group_send(&group, Bytes::from(frame), except)
    }
}

impl stats::Host for HostState {
    fn listener(&mut self) -> stats::ListenerStats {
        let s = self.ctx.hub.listener_stats();
        stats::ListenerStats {
            connected: s.connected,
            accepted: s.accepted,
            started_at_ms: ms_since_epoch(s.started_at),
            uptime_ms: millis(s.uptime),
            frames_in: s.frames_in,
            frames_out: s.frames_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        }
    }

    fn connection(&mut self, id: ConnectionId) -> Option<stats::ConnectionStats> {
        self.ctx
            .hub
            .connection_stats(id)
            .as_ref()
            .map(connection_stats)
    }

    fn connections(&mut self) -> Vec<stats::ConnectionStats> {
        self.ctx
            .hub
            .all_connection_stats()
            .iter()
            .map(connection_stats)
            .collect()
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        now_ms()
    }
}

impl timers::Host for HostState {
    fn start(
        &mut self,
        id: ConnectionId,
        delay_ms: u64,
        interval_ms: Option<u64>,
    ) -> Result<timers::TimerId, timers::TimerError> {
        use timers::TimerError as E;
        if !self.has_timer_handler {
            return Err(E::NoHandler);
        }
        self.ctx
            .hub
            .start_timer(
                id,
                Duration::from_millis(delay_ms),
                interval_ms.map(Duration::from_millis),
            )
            .map_err(|e| match e {
                hub::TimerError::UnknownConnection => E::UnknownConnection,
                hub::TimerError::TooMany => E::TooMany,
            })
    }

    fn cancel(&mut self, timer: timers::TimerId) -> bool {
        self.ctx.hub.cancel_timer(timer)
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.quiet {
            return;
        }
        let message = truncate(&message, MAX_LOG_MESSAGE);
        let listener = &*self.ctx.name;
        let plugin = &*self.plugin;
        let verdict = self.ctx.output.admit(message.len());
        if !super::output::note_drops(&verdict, listener, plugin) {
            return;
        }
        let conn = self.current;
        match level {
            Level::Trace => {
                tracing::trace!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl upstream::Host for HostState {
    async fn request(
        &mut self,
        name: String,
        frame: Vec<u8>,
    ) -> Result<Vec<u8>, upstream::UpstreamError> {
        use crate::upstream::UpstreamError as E;
        use upstream::UpstreamError as W;
        let Some(pool) = self.ctx.upstreams.get(&name) else {
            return Err(W::NotGranted);
        };
        // The upstream's own `request_timeout` bounds this wait, not the call deadline.
        let excuse = Excuse::begin(&self.excused);
        let result = pool.request(Bytes::from(frame)).await;
        drop(excuse);
        self.resumed_from_wait = true;
        match result {
            Ok(reply) => Ok(reply.to_vec()),
            Err(E::NotGranted) => Err(W::NotGranted),
            Err(E::Unavailable) => Err(W::Unavailable),
            Err(E::Timeout) => Err(W::Timeout),
            Err(E::FrameTooLarge) => Err(W::FrameTooLarge),
            Err(E::InvalidFrame) => Err(W::InvalidFrame),
        }
    }

    fn granted(&mut self) -> Vec<String> {
        self.ctx.upstreams.names()
    }
}
