//! One upstream's connections: a pool per address with at most `max_size` connections,
//! idle ones reused (newest first) and closed after `idle_timeout`, dead ones detected before
//! they are handed out, round-robin balancing with failover, and an overall request timeout.
//!
//! The I/O runs on the caller's runtime: a pooled connection is detached from any reactor
//! while idle and attached to the caller's when taken (see [`super::socket`]).
//!
//! Why connections are checked out exclusively: a frame protocol has no request ids, so a
//! reply can only be matched to its request if one request at a time uses a connection.
//!
//! kn-sock's pool hands back a socket whose peer has gone; here a connection taken from the
//! idle list is first polled for readability without blocking: end-of-stream, an error or
//! unsolicited bytes mean the upstream closed it (or the protocol is out of step), and it is
//! dropped. The check cannot see a close still in flight, so a reused connection that ends
//! before any reply byte arrives is retried once on a fresh connection — that is the upstream
//! that restarted. A fresh connection failing the same way is an error, never retried: the
//! upstream may have acted on the request.

use crate::sys::lock;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::UpstreamSpec;
use super::socket::Socket;
use crate::net::framing::{FrameDecoder, Framing};
use crate::ops::metrics::UpstreamMetrics;

/// How long an address that refused a connection is skipped (while another is available).
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// Why a request failed (mirrors WIT `upstream.upstream-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The listener was not granted an upstream of that name.
    #[error("not granted")]
    NotGranted,
    /// No address could be reached, or the connection broke before the reply.
    #[error("unavailable")]
    Unavailable,
    /// No reply within `request_timeout`.
    #[error("timed out")]
    Timeout,
    /// The request or the reply is larger than the upstream's `max_frame`.
    #[error("frame too large")]
    FrameTooLarge,
    /// The request cannot be delimited with the upstream's framing (a newline inside a
    /// `lines` frame).
    #[error("invalid frame")]
    InvalidFrame,
}

/// Every result a request's metrics may record: `ok`, then how a request fails (a request for
/// an upstream not granted is counted as `unavailable`: it never reaches a pool).
pub const RESULTS: &[&str] = &[
    "ok",
    "unavailable",
    "timeout",
    "frame-too-large",
    "invalid-frame",
];

impl UpstreamError {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamError::NotGranted => "not-granted",
            UpstreamError::Unavailable => "unavailable",
            UpstreamError::Timeout => "timeout",
            UpstreamError::FrameTooLarge => "frame-too-large",
            UpstreamError::InvalidFrame => "invalid-frame",
        }
    }
}

/// One upstream's pools, one per address.
pub struct Pool {
    spec: UpstreamSpec,
    addresses: Vec<Address>,
    /// Round-robin position.
    next: AtomicUsize,
    metrics: UpstreamMetrics,
    /// SHA-256 over the TLS files' contents when the pool was built, so a reload can tell
    /// that a certificate was renewed even though the paths are the same.
    tls_digest: Option<Vec<u8>>,
    /// Set once a reload replaced or removed this upstream: the pool finishes what it is doing
    /// but no longer publishes its sizes (its successor does).
    retired: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.spec.name)
            .finish_non_exhaustive()
    }
}

/// One address of an upstream.
struct Address {
    addr: String,
    /// `max_size` busy slots (see [`Pool::on_address`]).
    permits: Semaphore,
    /// Connections open now, idle or in use.
    open: Arc<AtomicUsize>,
    /// Idle connections, most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Until when this address is skipped after failing to connect.
    down_until: Mutex<Option<Instant>>,
    /// TLS connector and the name to verify, on TLS upstreams.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection and its read buffer.
struct Conn {
    stream: Stream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// Counts it in its address's open connections while it exists.
    _counted: Counted,
}

/// Holds one unit of a count for as long as it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Stream {
    Plain(Socket),
    Tls(Box<tokio_rustls::client::TlsStream<Socket>>),
}

impl Stream {
    fn socket(&mut self) -> &mut Socket {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => tls.get_mut().0,
        }
    }
}

/// How one attempt on one address ended, when it did not produce a reply.
enum Attempt {
    /// Could not connect: try the next address.
    Connect,
    /// The request may have reached the upstream: report, do not resend.
    Failed(UpstreamError),
}

/// How an exchange on one connection failed.
enum Exchange {
    /// The connection ended before any reply byte (stale when it was reused).
    NothingBack,
    /// Anything else.
    Failed(UpstreamError),
}

impl Pool {
    /// Builds the pool for `spec` (loads TLS files; connects lazily) and starts its idle
    /// sweeper on the upstream runtime.
    pub fn new(spec: UpstreamSpec) -> Result<Arc<Pool>> {
        let mut addresses = Vec::new();
        for addr in &spec.addresses {
            let tls = match &spec.tls {
                None => None,
                Some(tls) => {
                    let args = crate::net::tls::client::ClientTlsArgs {
                        tls: true,
                        ca: tls.ca.clone(),
                        cert: tls.cert.clone(),
                        key: tls.key.clone(),
                        server_name: tls.server_name.clone(),
                        insecure: !tls.verify,
                    };
                    args.connector(addr)
                        .with_context(|| format!("upstream `{}` TLS", spec.name))?
                }
            };
            addresses.push(Address {
                addr: addr.clone(),
                permits: Semaphore::new(spec.max_size),
                open: Arc::default(),
                idle: Mutex::new(VecDeque::new()),
                down_until: Mutex::new(None),
                tls,
            });
        }
        if addresses.is_empty() {
            bail!("upstream `{}` has no addresses", spec.name);
        }
        let pool = Arc::new(Pool {
            metrics: UpstreamMetrics::new(&spec.name, RESULTS),
            tls_digest: tls_digest(&spec)?,
            spec,
            addresses,
            next: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        });
        super::runtime().spawn(sweep_idle(Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// The upstream's settings.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// Whether a pool built for `spec` now would be this one: same settings and the same TLS
    /// file contents.
    pub fn serves(&self, spec: &UpstreamSpec) -> bool {
        self.spec == *spec && tls_digest(spec).ok().flatten() == self.tls_digest
    }

    /// Marks the pool as replaced by a reload: requests already running finish, and its sizes
    /// stop being published (they read 0 until a successor publishes its own).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.metrics.set_sizes(0, 0);
    }

    /// Sends `frame` and returns the reply frame, doing the I/O on the caller's runtime (see
    /// [`super::socket`]). Dropping the future mid-exchange closes the connection it was using
    /// rather than pooling a connection with a reply still on its way.
    pub async fn request(&self, frame: Bytes) -> Result<Bytes, UpstreamError> {
        let started = Instant::now();
        let result = if frame.len() > self.spec.max_frame {
            Err(UpstreamError::FrameTooLarge)
        } else {
            tokio::time::timeout(self.spec.request_timeout, self.try_addresses(&frame))
                .await
                .unwrap_or(Err(UpstreamError::Timeout))
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(UpstreamError::NotGranted) => "unavailable",
            Err(err) => err.name(),
        };
        self.metrics.finished(label, started.elapsed());
        self.update_sizes();
        if let Err(err) = &result {
            // The plugin only learns the error kind; the operator needs to know where it went.
            warn!(
                upstream = %self.spec.name,
                addresses = %self.spec.addresses.join(", "),
                "request failed: {err}"
            );
        }
        result
    }

    /// Tries the addresses in round-robin order, skipping those marked down unless every
    /// address is.
    async fn try_addresses(&self, frame: &Bytes) -> Result<Bytes, UpstreamError> {
        let n = self.addresses.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut up, mut down): (Vec<&Address>, Vec<&Address>) = (0..n)
            .map(|i| &self.addresses[(start + i) % n])
            .partition(|a| !a.is_down(now));
        // When all are down, the one that has been down longest goes first: it is the most
        // likely to be back.
        down.sort_by_key(|a| *lock(&a.down_until));
        up.extend(down);
        for address in up {
            match self.on_address(address, frame).await {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Connect) => {
                    self.metrics.connect_failed.inc();
                    *lock(&address.down_until) = Some(Instant::now() + DOWN_FOR);
                }
                Err(Attempt::Failed(err)) => return Err(err),
            }
        }
        Err(UpstreamError::Unavailable)
    }

    /// One request on one address. The permit is a busy slot: a connection is used, or
    /// created, only while holding one, a new one only when no idle one is left, and a used
    /// one goes back to the idle list before its permit is released — so idle plus busy
    /// connections never exceed `max_size`.
    async fn on_address(&self, address: &Address, frame: &Bytes) -> Result<Bytes, Attempt> {
        let permit = match address.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.waits.inc();
                // Never closed: the semaphore lives as long as the pool.
                address
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| Attempt::Failed(UpstreamError::Unavailable))?
            }
        };
        if let Some(mut conn) = self.take_idle(address) {
            match conn.exchange(frame, self.spec.framing).await {
                Ok(reply) => {
                    self.put_back(address, conn);
                    drop(permit);
                    return Ok(reply);
                }
                // The upstream closed it while it sat idle (a restart): use a fresh one.
                Err(Exchange::NothingBack) => {
                    self.metrics.stale.inc();
                    drop(conn);
                }
                Err(Exchange::Failed(err)) => return Err(Attempt::Failed(err)),
            }
        }
        let mut conn = match tokio::time::timeout(self.spec.connect_timeout, self.connect(address))
            .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                warn!(upstream = %self.spec.name, address = %address.addr, "cannot connect: {err}");
                return Err(Attempt::Connect);
            }
            Err(_) => {
                warn!(
                    upstream = %self.spec.name,
                    address = %address.addr,
                    "connect timed out after {:?}",
                    self.spec.connect_timeout
                );
                return Err(Attempt::Connect);
            }
        };
        *lock(&address.down_until) = None;
        let result = conn.exchange(frame, self.spec.framing).await;
        let result = match result {
            Ok(reply) => {
                self.put_back(address, conn);
                Ok(reply)
            }
            Err(err) => {
                // Closed before its busy slot is freed, so idle + busy stays within max_size.
                drop(conn);
                Err(Attempt::Failed(match err {
                    Exchange::NothingBack => UpstreamError::Unavailable,
                    Exchange::Failed(err) => err,
                }))
            }
        };
        drop(permit);
        result
    }

    /// The most recently used idle connection that is still alive and not expired, attached
    /// to the caller's runtime.
    fn take_idle(&self, address: &Address) -> Option<Conn> {
        loop {
            let entry = lock(&address.idle).pop_back()?;
            let mut conn = entry.conn;
            if entry.since.elapsed() >= self.spec.idle_timeout {
                self.metrics.expired.inc();
                continue;
            }
            if conn.stream.socket().attach().is_ok() && conn.is_quiet() {
                return Some(conn);
            }
            self.metrics.stale.inc();
        }
    }

    /// Returns a connection after a complete exchange; one with bytes left over (a reply the
    /// framing did not expect) is out of step and closed instead.
    fn put_back(&self, address: &Address, mut conn: Conn) {
        if self.spec.framing == Framing::Raw {
            // A raw reply is whatever one read returned; the rest of a reply split across
            // segments could still be on its way and would answer the next request.
            return;
        }
        if !conn.buf.is_empty() {
            warn!(upstream = %self.spec.name, address = %address.addr, "the upstream sent more than one reply; connection closed");
            return;
        }
        if let Err(err) = conn.stream.socket().detach() {
            debug!(upstream = %self.spec.name, "cannot pool a connection: {err}");
            return;
        }
        lock(&address.idle).push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Publishes the pool's open and idle connection counts.
    fn update_sizes(&self) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let idle: usize = self.addresses.iter().map(|a| lock(&a.idle).len()).sum();
        self.metrics.set_sizes(self.open_connections(), idle);
    }

    async fn connect(&self, address: &Address) -> io::Result<Conn> {
        let tcp = TcpStream::connect(&address.addr).await?;
        tcp.set_nodelay(true)?;
        let socket = Socket::Attached(tcp);
        let stream = match &address.tls {
            None => Stream::Plain(socket),
            Some((connector, name)) => {
                Stream::Tls(Box::new(connector.connect(name.clone(), socket).await?))
            }
        };
        self.metrics.opened.inc();
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            decoder: self.spec.framing.decoder(self.spec.max_frame),
            _counted: Counted::new(&address.open),
        })
    }

    /// Connections opened since the pool was built.
    pub fn opened(&self) -> u64 {
        self.metrics.opened.get()
    }

    /// Connections (idle + in use) of every address, for tests and the admin endpoint.
    pub fn open_connections(&self) -> usize {
        self.addresses
            .iter()
            .map(|a| a.open.load(Ordering::Relaxed))
            .sum()
    }
}

impl Address {
    fn is_down(&self, now: Instant) -> bool {
        lock(&self.down_until).is_some_and(|until| until > now)
    }
}

impl Conn {
    /// Whether a connection just taken from the pool (and attached) is still open and in step:
    /// one read is attempted without waiting. Nothing to read means alive; end-of-stream or an
    /// error means the upstream closed it; data means a reply nobody asked for (the protocol is
    /// out of step). On TLS the read goes through rustls, so session tickets and key updates
    /// are consumed as protocol messages and only application data counts.
    fn is_quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = match &mut self.stream {
            Stream::Plain(socket) => std::pin::Pin::new(socket).poll_read(&mut cx, &mut buf),
            Stream::Tls(tls) => std::pin::Pin::new(tls.as_mut()).poll_read(&mut cx, &mut buf),
        };
        matches!(polled, std::task::Poll::Pending)
    }

    /// Writes one request frame and reads one reply frame.
    async fn exchange(&mut self, frame: &[u8], framing: Framing) -> Result<Bytes, Exchange> {
        let mut out = BytesMut::with_capacity(frame.len() + 8);
        if framing == Framing::Lines && frame.contains(&b'\n') {
            // It would arrive as two requests and be answered twice.
            return Err(Exchange::Failed(UpstreamError::InvalidFrame));
        }
        framing
            .encode(frame, &mut out)
            .map_err(|_| Exchange::Failed(UpstreamError::FrameTooLarge))?;
        let written = match &mut self.stream {
            Stream::Plain(s) => s.write_all(&out).await,
            Stream::Tls(s) => match s.write_all(&out).await {
                Ok(()) => s.flush().await,
                Err(err) => Err(err),
            },
        };
        if written.is_err() {
            return Err(Exchange::NothingBack);
        }
        let mut got_any = false;
        loop {
            match self.decoder.decode(&mut self.buf) {
                // A raw reply is one read; a read longer than the limit was cut.
                Ok(Some(_)) if framing == Framing::Raw && !self.buf.is_empty() => {
                    return Err(Exchange::Failed(UpstreamError::FrameTooLarge));
                }
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(crate::net::framing::FrameError::TooLarge { .. }) => {
                    return Err(Exchange::Failed(UpstreamError::FrameTooLarge));
                }
                Err(_) => return Err(Exchange::Failed(UpstreamError::Unavailable)),
            }
            self.buf.reserve(self.decoder.read_hint().max(4096));
            let read = match &mut self.stream {
                Stream::Plain(s) => s.read_buf(&mut self.buf).await,
                Stream::Tls(s) => s.read_buf(&mut self.buf).await,
            };
            match read {
                Ok(0) | Err(_) if !got_any => return Err(Exchange::NothingBack),
                Ok(0) => {
                    return match self.decoder.decode_eof(&mut self.buf) {
                        Ok(Some(reply)) => Ok(reply),
                        _ => Err(Exchange::Failed(UpstreamError::Unavailable)),
                    };
                }
                Err(_) => return Err(Exchange::Failed(UpstreamError::Unavailable)),
                Ok(_) => got_any = true,
            }
        }
    }
}

/// SHA-256 over the contents of the upstream's TLS files (none without TLS).
fn tls_digest(spec: &UpstreamSpec) -> Result<Option<Vec<u8>>> {
    use sha2::{Digest, Sha256};
    let Some(tls) = &spec.tls else {
        return Ok(None);
    };
    let mut hash = Sha256::new();
    for path in [&tls.ca, &tls.cert, &tls.key].into_iter().flatten() {
        let bytes = std::fs::read(path)
            .with_context(|| format!("upstream `{}`: cannot read {}", spec.name, path.display()))?;
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(Some(hash.finalize().to_vec()))
}

/// Closes idle connections older than `idle_timeout`, until the pool is dropped.
async fn sweep_idle(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(p) => {
            (p.spec.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        for address in &pool.addresses {
            let mut idle = lock(&address.idle);
            // Oldest at the front.
            while idle
                .front()
                .is_some_and(|e| e.since.elapsed() >= pool.spec.idle_timeout)
            {
                idle.pop_front();
                pool.metrics.expired.inc();
            }
        }
        pool.update_sizes();
    }
}
