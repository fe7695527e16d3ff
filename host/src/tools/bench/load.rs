//! The load generator behind `pier bench`: N connections, each keeping W frames in flight
//! (closed loop) or paced to a rate, checking every reply and recording each round trip's
//! latency in an HDR histogram.
//!
//! Every frame of a connection carries the same payload, so a reply can be checked without
//! bookkeeping: it must equal the expected reply (`Echo: ` + payload by default). With raw
//! framing replies have no delimiter, so they are cut by the expected reply's length.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tools::client::ClientIo;

use crate::net::framing::Framing;

/// What a run does.
#[derive(Clone)]
pub struct LoadSpec {
    /// Server address.
    pub addr: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many round trips in total.
    pub requests: Option<u64>,
    /// Payload size in bytes.
    pub size: usize,
    /// Frames in flight per connection.
    pub in_flight: usize,
    /// Framing.
    pub framing: Framing,
    /// Total round trips per second to aim for (paced); `None` runs flat out.
    pub rate: Option<f64>,
    /// The reply expected for each frame is this prefix followed by the payload.
    pub expect_prefix: Vec<u8>,
    /// Connect with TLS.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Measure connection set-up: every round trip on a new connection (TCP connect, TLS
    /// handshake if any, one frame, close); latency then covers all of it.
    pub reconnect: bool,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Round trips completed (replies received and checked).
    pub round_trips: u64,
    /// Replies that did not match.
    pub mismatches: u64,
    /// Connections that failed (connect errors, resets, early closes).
    pub errors: u64,
    /// `errors` by kind (`connect`, `tls-handshake`, `closed`, ...).
    pub error_kinds: BTreeMap<&'static str, u64>,
    /// The first failure's kind and detail, e.g. `connect: Connection refused (os error 111)`.
    pub first_error: Option<String>,
    /// The first reply that did not match, as received.
    pub first_unexpected: Option<Bytes>,
    /// The reply every frame should get.
    pub expected: Bytes,
    /// Wall-clock time of the measured run.
    pub elapsed: Duration,
    /// Round-trip latency in nanoseconds.
    pub latency: Histogram<u64>,
}

impl LoadReport {
    /// Counts one failed connection.
    fn failed(&mut self, kind: &'static str, detail: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind).or_default() += 1;
        self.first_error
            .get_or_insert_with(|| format!("{kind}: {detail}"));
    }

    /// Round trips per second.
    pub fn rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Shared progress counters, read by the progress bar.
#[derive(Default)]
pub struct Progress {
    /// Round trips so far.
    pub done: AtomicU64,
    /// Set to stop every connection (duration reached or request budget spent).
    pub stop: AtomicBool,
}

/// A connection waiting this long for a reply counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn payload(size: usize) -> Vec<u8> {
    // Printable, varied bytes: survives line framing (no newline) and is not all one value.
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Runs the load and returns the merged report.
pub async fn run(spec: &LoadSpec, progress: Arc<Progress>) -> LoadReport {
    let payload = payload(spec.size);
    let mut expected = spec.expect_prefix.clone();
    expected.extend_from_slice(&payload);
    let payload = Arc::new(payload);
    let expected = Arc::new(expected);
    let expected_reply = Bytes::from(expected.to_vec());
    let budget = spec.requests.map(|r| Arc::new(AtomicU64::new(r)));
    let per_conn_interval = spec
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        let conn = Conn {
            tls: spec.tls.clone(),
            reconnect: spec.reconnect,
            addr: spec.addr.clone(),
            framing: spec.framing,
            in_flight: spec.in_flight.max(1),
            payload: payload.clone(),
            expected: expected.clone(),
            budget: budget.clone(),
            interval: per_conn_interval,
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(conn.run()));
    }
    if let Some(duration) = spec.duration {
        let progress = progress.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            progress.stop.store(true, Ordering::Relaxed);
        });
    }
    let mut report = LoadReport {
        round_trips: 0,
        mismatches: 0,
        errors: 0,
        error_kinds: BTreeMap::new(),
        first_error: None,
        first_unexpected: None,
        expected: expected_reply,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    };
    for task in tasks {
        match task.await {
            Ok(outcome) => {
                report.round_trips += outcome.round_trips;
                report.mismatches += outcome.mismatches;
                if let Some(failure) = outcome.failure {
                    report.failed(failure.kind, failure.detail);
                }
                if report.first_unexpected.is_none() {
                    report.first_unexpected = outcome.unexpected;
                }
                let _ = report.latency.add(&outcome.latency);
            }
            Err(err) => report.failed("task", err.to_string()),
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 60 s at 3 significant digits; fixed bounds, so recording never allocates.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

struct Conn {
    tls: Option<(TlsConnector, ServerName<'static>)>,
    reconnect: bool,
    addr: String,
    framing: Framing,
    in_flight: usize,
    payload: Arc<Vec<u8>>,
    expected: Arc<Vec<u8>>,
    budget: Option<Arc<AtomicU64>>,
    interval: Option<Duration>,
    progress: Arc<Progress>,
}

struct Outcome {
    round_trips: u64,
    mismatches: u64,
    /// Why the connection stopped early, if it did.
    failure: Option<Failure>,
    /// The first reply that did not match.
    unexpected: Option<Bytes>,
    latency: Histogram<u64>,
}

/// Why a connection failed: a short kind for counting and the error's text.
struct Failure {
    kind: &'static str,
    detail: String,
}

impl Outcome {
    /// Records why the connection stopped.
    fn fail(&mut self, kind: &'static str, detail: impl std::fmt::Display) {
        self.failure = Some(Failure {
            kind,
            detail: detail.to_string(),
        });
    }

    /// Checks one reply against the expected one.
    fn check(&mut self, reply: Bytes, expected: &[u8]) {
        if reply[..] != *expected {
            self.mismatches += 1;
            self.unexpected.get_or_insert(reply);
        }
    }
}

/// How a read for replies ended, when it did not bring bytes.
fn read_failure(
    read: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
) -> Option<(&'static str, String)> {
    match read {
        Ok(Ok(0)) => Some(("closed", "the server closed the connection".to_string())),
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(("read", err.to_string())),
        Err(_) => Some(("timeout", format!("no reply within {REPLY_TIMEOUT:?}"))),
    }
}

impl Conn {
    /// Takes one request from the shared budget; false when it is spent or the run is over.
    fn take(&self) -> bool {
        if self.progress.stop.load(Ordering::Relaxed) {
            return false;
        }
        match &self.budget {
            None => true,
            Some(b) => b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// Connects (and handshakes, with TLS, and upgrades, with WebSocket); on failure, the kind
    /// and the error. Also returns what arrived after the upgrade's answer.
    async fn open(&self) -> Result<(Box<dyn ClientIo>, BytesMut), (&'static str, std::io::Error)> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|err| ("connect", err))?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn ClientIo> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| ("tls-handshake", err))?;
                Box::new(tls)
            }
        };
        let mut arrived = BytesMut::new();
        if self.framing == Framing::WebSocket {
            arrived = crate::tools::client::websocket_handshake(&mut *stream, &self.addr, "/")
                .await
                .map_err(|reason| ("websocket-upgrade", std::io::Error::other(reason)))?;
        }
        Ok((stream, arrived))
    }

    /// Reconnect mode: each round trip on a fresh connection.
    async fn run_reconnecting(self, mut out: Outcome, frame: BytesMut) -> Outcome {
        let mut decoder = self.framing.client_decoder(64 * 1024 * 1024);
        let mut read_buf = BytesMut::with_capacity(4096);
        while self.take() {
            let started = Instant::now();
            let mut stream = match self.open().await {
                Ok((stream, arrived)) => {
                    read_buf.clear();
                    read_buf.extend_from_slice(&arrived);
                    stream
                }
                Err((kind, err)) => {
                    out.fail(kind, err);
                    return out;
                }
            };
            if let Err(err) = write_frames(&mut stream, &frame).await {
                out.fail("write", err);
                return out;
            }
            let reply = loop {
                let reply = if self.framing == Framing::Raw {
                    (read_buf.len() >= self.expected.len())
                        .then(|| read_buf.split_to(self.expected.len()).freeze())
                } else {
                    decoder.decode(&mut read_buf).ok().flatten()
                };
                if let Some(reply) = reply {
                    break Ok(reply);
                }
                read_buf.reserve(4096);
                let read =
                    tokio::time::timeout(REPLY_TIMEOUT, stream.read_buf(&mut read_buf)).await;
                if let Some(failure) = read_failure(read) {
                    break Err(failure);
                }
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err((kind, detail)) => {
                    out.fail(kind, detail);
                    return out;
                }
            };
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = out.latency.record(nanos.max(1));
            out.check(reply, &self.expected);
            out.round_trips += 1;
            self.progress.done.fetch_add(1, Ordering::Relaxed);
            let _ = stream.shutdown().await;
        }
        out
    }

    async fn run(self) -> Outcome {
        let mut out = Outcome {
            round_trips: 0,
            mismatches: 0,
            failure: None,
            unexpected: None,
            latency: new_histogram(),
        };
        let mut frame = BytesMut::new();
        if let Err(err) = self.framing.encode(&self.payload, &mut frame) {
            out.fail("encode", err);
            return out;
        }
        if self.reconnect {
            return self.run_reconnecting(out, frame).await;
        }
        let (mut stream, arrived) = match self.open().await {
            Ok(opened) => opened,
            Err((kind, err)) => {
                out.fail(kind, err);
                return out;
            }
        };
        let mut decoder = self.framing.client_decoder(64 * 1024 * 1024);
        let mut read_buf = BytesMut::with_capacity(64 * 1024);
        read_buf.extend_from_slice(&arrived);
        let mut write_buf = BytesMut::new();
        let mut sent_at = std::collections::VecDeque::with_capacity(self.in_flight);
        let mut next_send = Instant::now();
        loop {
            // Top the window up; in paced mode one frame per interval.
            while sent_at.len() < self.in_flight && self.take() {
                if let Some(interval) = self.interval {
                    let now = Instant::now();
                    if next_send > now {
                        tokio::time::sleep(next_send - now).await;
                    }
                    next_send = next_send.max(now) + interval;
                }
                write_buf.extend_from_slice(&frame);
                sent_at.push_back(Instant::now());
                if self.interval.is_some() {
                    break;
                }
            }
            if sent_at.is_empty() {
                break;
            }
            if !write_buf.is_empty() {
                if let Err(err) = write_frames(&mut stream, &write_buf).await {
                    out.fail("write", err);
                    break;
                }
                write_buf.clear();
            }
            read_buf.reserve(16 * 1024);
            let read = tokio::time::timeout(REPLY_TIMEOUT, stream.read_buf(&mut read_buf)).await;
            if let Some((kind, detail)) = read_failure(read) {
                out.fail(kind, detail);
                break;
            }
            loop {
                let reply = if self.framing == Framing::Raw {
                    (read_buf.len() >= self.expected.len())
                        .then(|| read_buf.split_to(self.expected.len()).freeze())
                } else {
                    match decoder.decode(&mut read_buf) {
                        Ok(reply) => reply,
                        Err(err) => {
                            out.fail("bad-frame", err);
                            return out;
                        }
                    }
                };
                let Some(reply) = reply else { break };
                let Some(sent) = sent_at.pop_front() else {
                    // More replies than requests: count it and carry on.
                    out.mismatches += 1;
                    out.unexpected.get_or_insert(reply);
                    continue;
                };
                let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let _ = out.latency.record(nanos.max(1));
                out.check(reply, &self.expected);
                out.round_trips += 1;
                self.progress.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }
}

/// Writes and flushes `bytes`.
async fn write_frames(stream: &mut Box<dyn ClientIo>, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
