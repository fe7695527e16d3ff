//! One client connection: socket in, frames to the plugin, replies and queued frames out.
//!
//! The task owns its socket, read buffer and write buffer. Frames decoded from one read are
//! handled in order and their replies collected into one buffer that goes out in one write, so
//! pipelined clients cost one syscall per batch and raw-framed clients get each reply in one
//! write. A client that does not read its replies stalls only its own task (the write awaits),
//! and frames other connections queue for it are bounded by the registry's write queue.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::net::admission::{Admitted, Pending};
use crate::net::framing::websocket::{self, Role};
use crate::net::framing::{FrameDecoder, Framing};
use crate::net::proxy;
use crate::net::tls::{TlsInfo, TlsListener};
use crate::net::transport::Transport;
use crate::net::upgrade::{self, Upgrade};
use crate::ops::metrics::ListenerMetrics;
use crate::runtime::bindings::CloseReason;
use crate::runtime::host::peer_record;
use crate::runtime::pool::{Instances, TenantInstances};
use crate::runtime::{Deployment, Fault, FaultKind, PluginSlot};
use crate::tenant::budget::{BudgetKind, Budgets};
use crate::tenant::hub::{
    ConnectionId, Control, Delivery, Mailbox, PeerInfo, Registry, Tally, TimerId,
};
use crate::tenant::listener::{Door, ListenerShared};

/// The most bytes read during a shutdown drain: what clients sent before the signal is
/// answered, a client that keeps streaming cannot hold shutdown up.
const DRAIN_READ_LIMIT: usize = 1024 * 1024;

/// An accepted connection on its way to a worker.
pub struct Job {
    /// The socket, detached from the accepting runtime (it is re-registered on the worker's).
    pub stream: std::net::TcpStream,
    /// The connection's place under the listener's limits; released when the connection ends.
    pub admitted: Place,
    /// What the listener serves.
    pub listener: Arc<ListenerShared>,
    /// The door it came in through: its framing, TLS and WebSocket settings.
    pub door: Arc<Door>,
}

/// A connection's place under its listener's admission limits.
pub enum Place {
    /// Admitted in full, by the socket's address.
    Admitted(Admitted),
    /// Holding a `max_connections` place; the per-address limits apply once the PROXY header
    /// has said whose connection it is.
    AwaitingProxyHeader(Pending),
}

/// How long, and how many bytes, a connection closed after an error reply keeps reading what
/// its client still sends (see `Connection::linger_before_close`).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Most frames handed to a `batch-handler` in one call (the WIT contract's limit).
const MAX_BATCH: usize = 1024;

/// Serves one connection until it closes, then tells the plugin. Returns the listener (tenant)
/// that served it: the job's, or the one its TLS server name is routed to.
pub async fn serve(job: Job, instances: &Instances) -> Arc<ListenerShared> {
    let Job {
        stream,
        admitted,
        listener,
        door,
    } = job;
    let socket_peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    // `peer` is the client: the socket's peer, or who a PROXY header says it relays.
    let span = info_span!(
        "conn",
        listener = %listener.name,
        plugin = tracing::field::Empty,
        conn = tracing::field::Empty,
        peer = tracing::field::Empty,
        via = tracing::field::Empty,
    );
    let mut served = listener.clone();
    async {
        let mut stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(err) => {
                warn!(peer = %socket_peer, "cannot register the socket: {err}");
                return;
            }
        };
        let (remote, admitted) = match admitted {
            Place::Admitted(admitted) => (socket_peer, admitted),
            Place::AwaitingProxyHeader(pending) => {
                tracing::Span::current().record("via", socket_peer.as_str());
                let Some(settings) = &door.proxy else {
                    return;
                };
                let client = match Box::pin(proxy::read_header(&mut stream, settings)).await {
                    Ok(Some(client)) => client.to_string(),
                    Ok(None) => socket_peer,
                    Err((why, detail)) => {
                        listener.metrics.proxy_refused(why.name());
                        warn!(reason = why.name(), "PROXY header refused: {detail}");
                        return;
                    }
                };
                let ip = client
                    .parse::<std::net::SocketAddr>()
                    .map(|a| a.ip())
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                match pending.at(ip) {
                    Ok(admitted) => (client, admitted),
                    Err(why) => {
                        listener.metrics.refused(why.name());
                        return;
                    }
                }
            }
        };
        tracing::Span::current().record("peer", remote.as_str());
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown".into());
        let connected_at = SystemTime::now();
        let (mut transport, tls) = match &door.tls {
            None => (Transport::Plain(stream), None),
            // Boxed: the handshake future embeds a whole rustls connection, and unboxed it
            // would enlarge every connection task, TLS or not, for its whole life.
            Some(tls) => match Box::pin(handshake(tls, stream, &listener.metrics)).await {
                Some((stream, info)) => (Transport::Tls(Box::new(stream)), Some(Box::new(info))),
                None => return,
            },
        };
        // Before `on-open`, so the 101 precedes anything the plugin sends; boxed like the TLS
        // handshake, for the size of every connection's task.
        let mut read_buf = BytesMut::new();
        if let Some(settings) = &door.websocket {
            match Box::pin(upgrade::accept(&mut transport, settings, &listener.metrics)).await {
                Upgrade::Open { leftover, protocol } => {
                    debug!(
                        protocol = protocol.as_deref().unwrap_or(""),
                        "WebSocket open"
                    );
                    read_buf = leftover;
                }
                Upgrade::Answered => return,
            }
        }
        if !listener.routes.is_empty() {
            served = listener.route(tls.as_ref().and_then(|t| t.server_name.as_deref()));
            if !Arc::ptr_eq(&served, &listener) {
                debug!(tenant = %served.name, "routed by TLS server name");
            }
        }
        let listener = served.clone();
        // Numbered by the tenant that serves it, after routing: see `next_connection_id`.
        let id = listener.next_connection_id();
        tracing::Span::current().record("conn", id);
        {
            // The version serving when the connection opened; after a reload the plugin's own
            // lines name the version that handled each call.
            let plugin = listener.slot.current().plugin.clone();
            tracing::Span::current().record(
                "plugin",
                tracing::field::display(format_args!("{}@{}", plugin.name, plugin.version)),
            );
        }
        let instances = instances.get(listener.tenant());
        let peer = PeerInfo {
            id,
            remote_addr: remote,
            local_addr: local,
            listener: listener.name.clone(),
            connected_at,
            tls,
        };
        let record = peer_record(&peer);
        let mailbox = listener.hub.register(peer);
        // Unregisters even if this task unwinds, so the registry never holds a dead entry.
        let registration = Registration {
            hub: listener.hub.clone(),
            id,
            open: listener.metrics.open.clone(),
        };
        listener.metrics.accepted.inc();
        registration.open.inc();
        debug!("connected");
        let mut conn = Connection {
            id,
            hub: listener.hub.clone(),
            framing: door.framing,
            decoder: match &door.websocket {
                Some(settings) => {
                    FrameDecoder::websocket(Role::Server, listener.max_frame, settings.replies)
                }
                None => door.framing.decoder(listener.max_frame),
            },
            max_reply: reply_limit(door.framing, listener.max_frame),
            linger: false,
            budgets: listener.budgets.clone(),
            partial_charged: 0,
            frame_deadline: FrameDeadline {
                after: listener.limits.frame_timeout,
                since: None,
                timer: None,
            },
            taken: 0,
            write_queue_bytes: listener.limits.write_queue_bytes,
            transport,
            read_buf,
            write_buf: BytesMut::new(),
            mailbox,
            instances,
            signals: Signals::new(&listener),
            idle: listener.limits.idle_timeout.map(|after| Idle {
                after,
                last: tokio::time::Instant::now(),
                timer: None,
            }),
            closing: None,
            timers: None,
            timer_slots: HashMap::new(),
            batch: Vec::new(),
            tally: Tally::default(),
            slot: listener.slot.clone(),
            deployment: listener.slot.current(),
        };

        // Guest-call futures (wasmtime's fiber state, the lease, the batch) are boxed while they
        // run: inline, the largest of them would set the size of every connection's task for
        // its whole life, idle or not (4.4 KiB measured, against ~1 KiB boxed).
        let opened = Box::pin(async { conn.instances.lease().await.on_open(&record).await }).await;
        let reason = match opened {
            Ok(Ok(greeting)) => {
                if let Some(greeting) = greeting {
                    conn.queue_reply(&greeting);
                }
                conn.run().await
            }
            Ok(Err(refusal)) => {
                info!(reason = %refusal.reason, "plugin refused the connection");
                if let Some(message) = refusal.message {
                    conn.queue_reply(&message);
                }
                conn.goodbye(websocket::code::POLICY, &refusal.reason);
                // Out of `peers` before the client can see the close: a plugin counting
                // connections must not count one whose client already saw it end.
                listener.hub.begin_close(id);
                conn.finish().await;
                return;
            }
            Err(_fault) => {
                // Logged by the instance; the plugin never accepted the connection.
                conn.goodbye(websocket::code::INTERNAL, "plugin fault");
                listener.hub.begin_close(id);
                conn.finish().await;
                return;
            }
        };
        // Out of groups and peers, sends refused, attributes still readable for on-close — and
        // all that before the client sees the close. Frames already queued are still written.
        listener.hub.begin_close(id);
        conn.goodbye_for(reason);
        conn.finish().await;
        debug!(reason = ?reason, "closed");
        Box::pin(async { conn.instances.lease().await.on_close(id, reason).await }).await;
        drop(registration);
        drop(admitted);
    }
    .instrument(span)
    .await;
    served
}

/// Runs the TLS handshake under the listener's timeout; `None` (logged and counted) if it fails.
/// Inside the connection's own task, so a client that never starts it delays no one else.
async fn handshake(
    tls: &TlsListener,
    stream: TcpStream,
    metrics: &ListenerMetrics,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo)> {
    let timeout = tls.handshake_timeout();
    match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => {
            let info = crate::net::tls::peer_identity(stream.get_ref().1);
            Some((stream, info))
        }
        Ok(Err(err)) => {
            tls.failed();
            let reason = crate::net::tls::failure_reason(&err);
            metrics.tls_failure(reason);
            warn!(reason, "TLS handshake failed: {err}");
            None
        }
        Err(_) => {
            tls.failed();
            metrics.tls_failure("timeout");
            warn!(
                reason = "timeout",
                "TLS handshake timed out after {timeout:?}"
            );
            None
        }
    }
}

/// The largest reply written to a client: `max_frame`, the same bound as incoming frames, so a
/// listener's limit holds in both directions. An HTTP response may add a head of up to the
/// request-head limit, as requests may.
fn reply_limit(framing: Framing, max_frame: usize) -> usize {
    match framing {
        // The message; its frame header is the host's.
        Framing::Http => max_frame.saturating_add(crate::net::framing::http::MAX_HEAD),
        _ => max_frame,
    }
}

/// Keeps a connection in its listener's registry for exactly as long as it is served.
struct Registration {
    hub: Arc<dyn Registry>,
    id: ConnectionId,
    /// The listener's `pier_connections_open`, decremented with the unregistration.
    open: prometheus::IntGauge,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
        self.open.dec();
    }
}

/// Futures that complete on shutdown (drain, then force).
struct Signals {
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    force: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Signals {
    fn new(listener: &ListenerShared) -> Self {
        Signals {
            drain: Box::pin(listener.drain.clone().cancelled_owned()),
            force: Box::pin(listener.force.clone().cancelled_owned()),
        }
    }
}

/// The idle timeout of a connection. The deadline is not moved on every read (that would
/// touch the timer wheel per frame): reads only record `last`, and when the timer fires early
/// it is re-armed for `last + after`.
struct Idle {
    after: Duration,
    last: tokio::time::Instant,
    /// Boxed and created on first use so connections without the limit pay nothing.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    /// Completes when the connection has been idle for `after`.
    async fn expired(&mut self) {
        loop {
            let deadline = self.last + self.after;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            timer.as_mut().await;
            if self.last + self.after <= tokio::time::Instant::now() {
                return;
            }
        }
    }
}

/// The frame-completion timeout: a frame must be complete within `after` of its first byte,
/// however the bytes trickle in. Created on first use, like [`Idle`]'s timer.
struct FrameDeadline {
    after: Option<Duration>,
    /// When the unfinished frame now buffered began.
    since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl FrameDeadline {
    /// Notes whether a frame is unfinished after the buffered bytes were handled.
    fn track(&mut self, unfinished: bool) {
        match (unfinished, self.since) {
            (true, None) if self.after.is_some() => {
                self.since = Some(tokio::time::Instant::now());
            }
            (false, Some(_)) => self.since = None,
            _ => {}
        }
    }

    /// Completes when the unfinished frame has been coming in for too long.
    async fn expired(&mut self) {
        let (Some(after), Some(since)) = (self.after, self.since) else {
            return std::future::pending().await;
        };
        let deadline = since + after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().await;
    }
}

struct Connection {
    /// The connection's id, passed to every plugin call.
    id: ConnectionId,
    /// The listener's registry (timers report back to it).
    hub: Arc<dyn Registry>,
    /// How replies are framed.
    framing: Framing,
    /// Cuts incoming bytes into frames.
    decoder: FrameDecoder,
    /// Largest reply the plugin may return (see [`reply_limit`]).
    max_reply: usize,
    /// Set when the host answered a protocol error: read a little after closing (see
    /// `linger_before_close`).
    linger: bool,
    /// The tenant's budgets: the unfinished frame in `read_buf` is charged to
    /// `partial_frame_bytes`.
    budgets: Arc<Budgets>,
    /// Bytes of `read_buf` charged to the tenant now.
    partial_charged: usize,
    /// When the unfinished frame in `read_buf` began, with the listener's `frame_timeout`.
    frame_deadline: FrameDeadline,
    /// Bytes of queued frames (charged to the tenant's `queued_bytes`) taken into
    /// `write_buf` since the last write.
    taken: usize,
    /// The listener's per-connection byte bound on what waits to be written; replies are
    /// written out before more frames are handled once `write_buf` passes it.
    write_queue_bytes: usize,
    /// The client socket.
    transport: Transport,
    /// Bytes read but not yet framed.
    read_buf: BytesMut,
    /// Framed replies not yet written.
    write_buf: BytesMut,
    /// Frames queued for this connection by the plugin, and the plugin's close request.
    mailbox: Mailbox,
    /// This worker's instances of the plugin.
    instances: Rc<TenantInstances>,
    /// The shutdown and close signals, as futures made once per connection: creating a
    /// cancellation future registers a waiter under a lock, too costly once per loop turn.
    signals: Signals,
    /// The idle timeout, when the listener sets one.
    idle: Option<Idle>,
    /// Set once the connection must end after writing what is owed: the plugin asked
    /// (`plugin-closed`) or the client's request did (HTTP `Connection: close`, `peer-closed`).
    closing: Option<CloseReason>,
    /// This connection's timers, owned here so they fire between frames on this worker.
    /// Created on the first timer: an empty `DelayQueue` already holds a timing wheel of
    /// several KiB, too much for every idle connection.
    timers: Option<DelayQueue<TimerId>>,
    /// Each running timer's slot in `timers` and its repeat interval.
    timer_slots: HashMap<TimerId, (delay_queue::Key, Option<Duration>)>,
    /// Frames decoded from the current read, kept to reuse its allocation.
    batch: Vec<Bytes>,
    /// Traffic not yet added to the shared counters.
    tally: Tally,
    /// Where the listener's plugin version is published, and the version whose metrics this
    /// connection's traffic counts under.
    slot: Arc<PluginSlot>,
    deployment: Arc<Deployment>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.budgets
            .of(BudgetKind::PartialFrameBytes)
            .release(self.partial_charged);
    }
}

/// Why the main loop stopped.
type Closed = CloseReason;

impl Connection {
    /// The main loop; returns why the connection ended. Replies owed are in `write_buf` and are
    /// flushed by `finish`.
    async fn run(&mut self) -> Closed {
        loop {
            if let Err(err) = self.flush().await {
                return err;
            }
            if let Some(reason) = self.closing {
                return reason;
            }
            tokio::select! {
                biased;
                _ = &mut self.signals.drain => {
                    Box::pin(self.drain_on_shutdown()).await;
                    return CloseReason::Shutdown;
                }

                Some(delivery) = self.mailbox.next() => {
                    if self.mailbox.is_evicted() {
                        return self.evict();
                    }
                    self.deliver(delivery);
                    self.take_mailbox();
                }
                _ = self.frame_deadline.expired(), if self.frame_deadline.since.is_some() => {
                    return self.frame_timed_out();
                }
                _ = async { if let Some(idle) = self.idle.as_mut() { idle.expired().await } }, if self.idle.is_some() => {
                    info!("closing: idle for {:?}", self.idle.as_ref().map(|i| i.after).unwrap_or_default());
                    return CloseReason::IdleTimeout;
                }
                read = self.transport.read_some(&mut self.read_buf, self.decoder.read_hint()) => match read {
                    Ok(0) => {
                        if let Err(reason) = Box::pin(self.handle_frames(true)).await {
                            return reason;
                        }
                        return self.closing.unwrap_or(CloseReason::PeerClosed);
                    }
                    Ok(n) => {
                        self.tally.bytes_in += n as u64;
                        if let Some(idle) = self.idle.as_mut() {
                            idle.last = tokio::time::Instant::now();
                        }
                        // Boxed for the reason given in `serve`.
                        if let Err(reason) = Box::pin(self.handle_frames(false)).await {
                            return reason;
                        }
                        if self.read_buf.is_empty() {
                            self.read_buf = BytesMut::new();
                        }
                        if let Err(reason) = self.account_partial() {
                            return reason;
                        }
                    }
                    Err(err) => {
                        debug!("read failed: {err}");
                        return CloseReason::IoError;
                    }
                },
                // After the socket: a timer storm must not keep a connection from seeing its
                // client's bytes or its close. (tokio's cooperative budget makes a socket that
                // is always readable return `Pending` now and then, so timers still fire.)
                Some(expired) = poll_fn(|cx| match self.timers.as_mut() {
                    Some(timers) => timers.poll_expired(cx),
                    None => std::task::Poll::Ready(None),
                }), if self.timers.as_ref().is_some_and(|t| !t.is_empty()) => {
                    if let Err(reason) = Box::pin(self.fire_timer(expired.into_inner())).await {
                        return reason;
                    }
                }
            }
        }
    }

    /// The unfinished frame took longer than `frame_timeout`: the slowloris case. Said to the
    /// client where the protocol can (HTTP 408), logged, and counted as an idle timeout (the
    /// `close-reason` the plugin knows for "the client did not keep up").
    fn frame_timed_out(&mut self) -> Closed {
        let after = self.frame_deadline.after.unwrap_or_default();
        info!(
            buffered = self.read_buf.len(),
            "closing: a frame was still incomplete {after:?} after its first byte"
        );
        if self.framing == Framing::Http {
            let reply = crate::net::framing::http::error_response(
                408,
                &format!("request not complete within {after:?}"),
            );
            self.count_out(reply.len());
            self.write_buf.extend_from_slice(&reply);
            self.linger = true;
        }
        self.goodbye(
            websocket::code::POLICY,
            &format!("message not complete within {after:?}"),
        );
        CloseReason::IdleTimeout
    }

    /// Tells a WebSocket client why the host ends the connection (a close frame, after what is
    /// owed), and reads its answer before closing; nothing for other framings, which have no
    /// way to say it.
    fn goodbye(&mut self, code: u16, reason: &str) {
        if self.framing == Framing::WebSocket {
            self.decoder.close(code, reason, &mut self.write_buf);
            self.linger = true;
        }
    }

    /// The close frame for the way the connection ended. Protocol errors said theirs already,
    /// a peer's close was answered when it arrived, and a broken or evicted connection cannot
    /// be told anything.
    fn goodbye_for(&mut self, reason: CloseReason) {
        let (code, text) = match reason {
            CloseReason::PluginClosed => (websocket::code::NORMAL, ""),
            CloseReason::Shutdown => (websocket::code::GOING_AWAY, "server shutting down"),
            CloseReason::IdleTimeout => (websocket::code::POLICY, "idle timeout"),
            CloseReason::Fault => (websocket::code::INTERNAL, "plugin fault"),
            _ => return,
        };
        self.goodbye(code, text);
    }

    /// Charges the unfinished frame left in `read_buf` to the tenant's `partial_frame_bytes`
    /// budget (returning what is no longer held) and starts or stops the frame timeout. A
    /// connection whose partial frame does not fit the tenant's budget is closed.
    fn account_partial(&mut self) -> Result<(), Closed> {
        // A fragmented WebSocket message waits in the decoder, not in the read buffer.
        let held = self.read_buf.len() + self.decoder.buffered();
        let budget = self.budgets.of(BudgetKind::PartialFrameBytes);
        if held > self.partial_charged {
            if !budget.try_charge(held - self.partial_charged) {
                warn!(
                    buffered = held,
                    budget = budget.limit(),
                    "closing: the tenant's partial_frame_bytes budget is spent"
                );
                return Err(CloseReason::ProtocolError);
            }
        } else {
            budget.release(self.partial_charged - held);
        }
        self.partial_charged = held;
        self.frame_deadline.track(held > 0);
        Ok(())
    }

    /// One non-blocking read into the read buffer: `Some(0)` at end of stream, `None` if
    /// nothing is available right now.
    fn try_read(&mut self) -> io::Result<Option<usize>> {
        let read = self
            .transport
            .read_now(&mut self.read_buf, self.decoder.read_hint())?;
        if let Some(n) = read {
            self.tally.bytes_in += n as u64;
        }
        Ok(read)
    }

    /// Hands every complete frame in the read buffer to the plugin, in order, collecting the
    /// replies. Frames from one read go to a `batch-handler` plugin in one call; otherwise one
    /// call each, stopping early if the plugin closes the connection or faults.
    async fn handle_frames(&mut self, eof: bool) -> Result<(), Closed> {
        // More may be buffered than one batch takes.
        while self.handle_one_batch(eof).await? {}
        Ok(())
    }

    /// Decodes and handles up to `MAX_BATCH` frames; true if the batch was full and more may
    /// be waiting in the buffer.
    async fn handle_one_batch(&mut self, eof: bool) -> Result<bool, Closed> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut broken = None;
        let mut close_after = false;
        while self.closing.is_none() && batch.len() < MAX_BATCH {
            let decoded = if eof {
                self.decoder.decode_eof(&mut self.read_buf)
            } else {
                self.decoder.decode(&mut self.read_buf)
            };
            match decoded {
                Ok(Some(frame)) => {
                    self.tally.frames_in += 1;
                    batch.push(frame);
                    if self.decoder.close_requested() {
                        // Frames after one that asked to close are never handled.
                        close_after = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    broken = Some(err);
                    break;
                }
            }
        }
        if self.decoder.close_requested() {
            // A WebSocket close frame: what came before it is answered, then the connection ends.
            close_after = true;
        }
        let full = batch.len() >= MAX_BATCH;
        // Report what arrived before the plugin runs, so its stats include these frames.
        self.report_traffic();
        self.decoder.take_pongs(&mut self.write_buf);
        let handled = self.handle_batch(&batch).await;
        // The close reply, after the replies to what preceded it.
        self.decoder.take_output(&mut self.write_buf);
        batch.clear();
        // Keep a small batch allocation for the next read, not a large one for an idle connection.
        batch.shrink_to(16);
        self.batch = batch;
        handled?;
        if close_after && self.closing.is_none() {
            self.closing = Some(CloseReason::PeerClosed);
        }
        if let Some(err) = broken {
            warn!("protocol error, closing: {err}");
            if let crate::net::framing::FrameError::WebSocket { code, reason } = &err {
                // Through the codec, so nothing is written after this close frame.
                self.goodbye(*code, reason);
            } else if let Some(reply) = err.reply() {
                self.count_out(reply.len());
                self.write_buf.extend_from_slice(&reply);
                self.linger = true;
            }
            return Err(CloseReason::ProtocolError);
        }
        Ok(full && self.closing.is_none())
    }

    async fn handle_batch(&mut self, batch: &[Bytes]) -> Result<(), Closed> {
        if batch.is_empty() {
            // A read that ended mid-frame: no call, so no instance either.
            return Ok(());
        }
        let instances = self.instances.clone();
        let mut instance = instances.lease().await;
        instance.follow_reload().await;
        if batch.len() > 1 && instance.takes_batches() {
            let mut data = Vec::with_capacity(batch.iter().map(|f| f.len()).sum());
            let lengths: Vec<u32> = batch
                .iter()
                .map(|f| {
                    data.extend_from_slice(f);
                    u32::try_from(f.len()).unwrap_or(u32::MAX)
                })
                .collect();
            let result = instance.on_frames(self.id, &data, &lengths).await;
            self.take_mailbox();
            let (replies, reply_lengths) = result.map_err(|_fault| CloseReason::Fault)?;
            let mut start = 0usize;
            for len in reply_lengths.into_iter().take(batch.len()) {
                if self.closing.is_some() {
                    // An oversized reply or a response that ends the connection: nothing after.
                    break;
                }
                let Ok(len) = usize::try_from(len) else {
                    continue; // -1: no reply to this frame
                };
                let Some(reply) = replies.get(start..start + len) else {
                    warn!("batch replies run past their data; the rest are dropped");
                    break;
                };
                self.queue_reply(reply);
                start += len;
            }
            return Ok(());
        }
        let mut frames = batch.iter();
        let mut next = frames.next();
        while let Some(frame) = next {
            if self.closing.is_some() {
                break;
            }
            if self.write_buf.len() > self.write_queue_bytes {
                // A client that pipelines many requests for large replies and reads none: write
                // what is owed before making more, with the instance given back meanwhile (a
                // client that does not read must not hold one of its tenant's instances).
                drop(instance);
                self.flush().await?;
                instance = instances.lease().await;
                instance.follow_reload().await;
                continue;
            }
            let result = instance.on_frame(self.id, frame).await;
            self.after_call(result)?;
            next = frames.next();
        }
        Ok(())
    }

    /// Carries out a request: a close, or starting or stopping a timer.
    fn apply(&mut self, control: Control) {
        match control {
            Control::Close => {
                self.closing.get_or_insert(CloseReason::PluginClosed);
            }
            Control::StartTimer {
                timer,
                delay,
                interval,
            } => {
                let key = self
                    .timers
                    .get_or_insert_with(DelayQueue::new)
                    .insert(timer, delay);
                self.timer_slots.insert(timer, (key, interval));
            }
            Control::CancelTimer(timer) => {
                if let Some((key, _)) = self.timer_slots.remove(&timer)
                    && let Some(timers) = self.timers.as_mut()
                {
                    timers.try_remove(&key);
                }
            }
        }
    }

    /// Runs `on-timer` for a timer that came due and re-arms it if it repeats.
    async fn fire_timer(&mut self, timer: TimerId) -> Result<(), Closed> {
        let Some((_, interval)) = self.timer_slots.remove(&timer) else {
            return Ok(());
        };
        match interval {
            Some(every) => {
                let key = self
                    .timers
                    .get_or_insert_with(DelayQueue::new)
                    .insert(timer, every);
                self.timer_slots.insert(timer, (key, Some(every)));
            }
            None => self.hub.timer_done(self.id, timer),
        }
        let instances = self.instances.clone();
        let result = instances.lease().await.on_timer(self.id, timer).await;
        self.after_call(result)
    }

    /// Collects what a guest call produced: frames it queued for this connection go first, then
    /// its reply; a close request or a fault ends the connection.
    fn after_call(&mut self, result: Result<Option<Vec<u8>>, Fault>) -> Result<(), Closed> {
        self.take_mailbox();
        match result {
            Ok(Some(reply)) => {
                self.queue_reply(&reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_fault) => Err(CloseReason::Fault),
        }
    }

    /// Encodes a reply (or a frame from the inbox) into the write buffer. A reply larger than
    /// the listener's limit is a fault of the plugin: never written, and the connection closes.
    /// An HTTP response saying the connection ends makes the host end it.
    fn queue_reply(&mut self, frame: &[u8]) {
        if frame.len() > self.max_reply {
            let faults = self.instances.record_fault(FaultKind::ReplyTooLarge);
            error!(
                fault = FaultKind::ReplyTooLarge.name(),
                faults,
                "plugin fault (reply of {} bytes, above the {}-byte limit); not written, closing only this connection",
                frame.len(),
                self.max_reply
            );
            self.closing = Some(CloseReason::Fault);
            return;
        }
        if self.framing == Framing::Http
            && self.closing.is_none()
            && crate::net::framing::http::response_closes(frame)
        {
            self.closing = Some(CloseReason::PluginClosed);
        }
        let before = self.write_buf.len();
        match self
            .decoder
            .encode(self.framing, frame, &mut self.write_buf)
        {
            Ok(()) => self.count_out(self.write_buf.len() - before),
            Err(err) => warn!("reply dropped: {err}"),
        }
    }

    /// Adds the traffic counted since the last report to the connection's, the listener's and
    /// the serving plugin version's counters.
    fn report_traffic(&mut self) {
        if self.slot.generation() != self.deployment.generation {
            self.deployment = self.slot.current();
        }
        let t = &self.tally;
        self.deployment
            .metrics
            .traffic(t.frames_in, t.frames_out, t.bytes_in, t.bytes_out);
        self.mailbox.meter.record(&mut self.tally);
    }

    fn count_out(&mut self, bytes: usize) {
        self.tally.frames_out += 1;
        self.tally.bytes_out += bytes as u64;
    }

    /// Handles everything already in the inbox: frames go to the write buffer, requests are
    /// carried out.
    fn take_mailbox(&mut self) {
        let mut took = false;
        while let Some(delivery) = self.mailbox.try_next() {
            self.deliver(delivery);
            took = true;
        }
        if took {
            self.mailbox.set_unwritten(self.write_buf.len());
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Frame(frame) => {
                self.taken += frame.len();
                self.queue_reply(&frame);
            }
            Delivery::Control(control) => self.apply(control),
        }
    }

    /// Writes the write buffer out, giving up if the drain deadline passes.
    async fn flush(&mut self) -> Result<(), Closed> {
        self.report_traffic();
        if self.write_buf.is_empty() {
            return Ok(());
        }
        // Senders see this buffer as part of what waits for this client (`write_queue_bytes`).
        self.mailbox.set_unwritten(self.write_buf.len());
        let result = tokio::select! {
            biased;
            _ = &mut self.signals.force => Err(io::Error::other("shutdown deadline passed")),
            _ = self.mailbox.evicted() => {
                self.write_buf = BytesMut::new();
                return Err(self.evict());
            }
            r = self.transport.write_all(&self.write_buf) => r,
        };
        // Release the buffer: an idle connection should hold none, and a small allocation per
        // written batch costs little next to the write itself.
        self.write_buf = BytesMut::new();
        self.mailbox.set_unwritten(0);
        if result.is_ok() {
            self.mailbox.written(std::mem::take(&mut self.taken));
        }
        result.map_err(|err| {
            debug!("write failed: {err}");
            CloseReason::IoError
        })
    }

    /// The slow-consumer policy closes this connection: what it has not read is dropped.
    fn evict(&mut self) -> Closed {
        warn!("closing a slow consumer: its write queue is full");
        self.write_buf = BytesMut::new();
        while self.mailbox.try_next().is_some() {}
        CloseReason::SlowConsumer
    }

    /// On shutdown, answers what the client already sent (it may still sit in the socket
    /// buffer) without waiting for more.
    async fn drain_on_shutdown(&mut self) {
        let mut drained = 0;
        while drained < DRAIN_READ_LIMIT && self.closing.is_none() {
            match self.try_read() {
                Ok(Some(0)) => {
                    let _ = self.handle_frames(true).await;
                    return;
                }
                Ok(Some(n)) => {
                    drained += n;
                    if self.handle_frames(false).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = self.handle_frames(false).await;
        self.take_mailbox();
    }

    /// Flushes what is owed and closes the socket.
    async fn finish(&mut self) {
        if self.mailbox.is_evicted() {
            // Its client does not read: a flush or a TLS close_notify could wait forever.
            return;
        }
        self.take_mailbox();
        if self.flush().await.is_ok() {
            let _ = self.transport.shutdown().await;
            if self.linger {
                self.linger_before_close().await;
            }
        }
    }

    /// After an error reply to a client that may still be sending (an oversized HTTP request):
    /// reads and discards what it sends for a bounded time and amount, so closing does not reset
    /// the connection — a reset makes the client's kernel drop the error reply unread.
    async fn linger_before_close(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut discarded = 0usize;
        let mut scratch = BytesMut::new();
        while discarded < LINGER_BYTES {
            scratch.clear();
            match tokio::time::timeout_at(
                deadline,
                self.transport.read_some(&mut scratch, 16 * 1024),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::net::admission::Admission;
    use crate::runtime::{Runtime, RuntimeConfig};

    /// Every open connection holds its task for its whole life, idle or not, and a future is as
    /// large as its largest state. A guest call's state (wasmtime's fiber future, the lease,
    /// the batch) once made it 4.4 KiB; boxed while it runs, the task stays under 2 KiB.
    #[test]
    fn a_connection_task_does_not_carry_a_guest_call_inline() {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: None,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let echo = crate::builtin::find("echo").expect("echo built in");
        let plugin = runtime.load_plugin("echo", echo.wasm).expect("echo loads");
        let listener = ListenerShared::builder("t", plugin).build();
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(server.local_addr().expect("addr")).expect("connect");
        let (stream, peer) = server.accept().expect("accept");
        let admitted = Admission::new(&Limits::default())
            .admit(peer.ip())
            .expect("admitted");
        let instances = Instances::new(runtime);
        let task = serve(
            Job {
                stream,
                admitted: Place::Admitted(admitted),
                door: listener.door.clone(),
                listener,
            },
            &instances,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a connection's task is {size} bytes");
    }
}
