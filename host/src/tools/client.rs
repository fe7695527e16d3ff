//! The client side: `pier send`, one frame out and one reply back over the chosen framing.
//!
//! Errors are typed so the CLI can print one precise line (refused, timed out, closed early)
//! and tests can assert on the kind.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::net::framing::{FrameError, Framing};

/// Why `pier send` got no reply.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// Nothing listens at the address.
    #[error("connection refused by {0}")]
    Refused(String),
    /// Connecting failed for another reason.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// No reply within the timeout. The usual cause is a framing mismatch (the server waits
    /// for a delimiter that never comes), so the message says which framing was used.
    #[error(
        "no reply from {addr} within {timeout:?}; if the server delimits frames otherwise than \
         {framing}, say how with --framing ({others})",
        others = other_framings(.framing)
    )]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout in force.
        timeout: Duration,
        /// The framing the frame was sent with.
        framing: Framing,
    },
    /// A plaintext request was answered with a TLS record (a TLS server's alert).
    #[error("the server at {0} speaks TLS; add --tls (with --ca CA.pem or --insecure)")]
    SpeaksTls(String),
    /// A TLS handshake got a reply that is not TLS.
    #[error("the server at {0} does not speak TLS (its reply is not a TLS record); drop --tls")]
    NotTls(String),
    /// The server closed the connection first.
    #[error("{0} closed the connection without replying")]
    Closed(String),
    /// The reply broke the framing.
    #[error("bad reply from {addr}: {source}")]
    BadReply {
        /// The address.
        addr: String,
        /// What was wrong.
        source: FrameError,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The address.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The server did not accept the WebSocket upgrade.
    #[error("WebSocket upgrade to {addr} refused: {reason}")]
    Upgrade {
        /// The address.
        addr: String,
        /// The status line, or what was wrong with the answer.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
}

/// A client stream: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// The largest upgrade answer read.
const MAX_UPGRADE_ANSWER: usize = 16 * 1024;

/// Opens a WebSocket on a connected stream: sends the upgrade request for `path` to `host`,
/// reads the answer and checks its `101` and `Sec-WebSocket-Accept`. Returns the bytes that
/// arrived after the answer (the server's first frames, e.g. a greeting).
pub async fn websocket_handshake<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    host: &str,
    path: &str,
) -> Result<BytesMut, String> {
    let key = data_encoding::BASE64.encode(&rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                if answer.code != Some(101) {
                    let line = String::from_utf8_lossy(&buf[..head]);
                    return Err(line.lines().next().unwrap_or_default().to_string());
                }
                let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let accepted = answer.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("sec-websocket-accept")
                        && h.value == expected.as_bytes()
                });
                if !accepted {
                    return Err("wrong or missing Sec-WebSocket-Accept".into());
                }
                let _ = buf.split_to(head);
                return Ok(buf);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_UPGRADE_ANSWER => {}
            Ok(httparse::Status::Partial) => return Err("answer head too large".into()),
            Err(err) => return Err(format!("not an HTTP answer ({err})")),
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before answering".into());
        }
    }
}

/// Sends `message` as one frame to `addr` (over TLS when `tls` is given) and returns the first
/// reply frame. `path` is the WebSocket path, for that framing.
pub async fn send_one(
    addr: &str,
    (framing, path): (Framing, &str),
    message: &[u8],
    timeout: Duration,
    max_frame: usize,
    tls: Option<(TlsConnector, ServerName<'static>)>,
) -> Result<Bytes, SendFailure> {
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::ConnectionRefused {
                SendFailure::Refused(addr.to_string())
            } else {
                SendFailure::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
        })?;
        tcp.set_nodelay(true).ok();
        let plaintext = tls.is_none();
        let mut stream: Box<dyn ClientIo> = match tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| tls_failure(addr, source))?,
            ),
        };
        let mut out = BytesMut::new();
        framing
            .encode(message, &mut out)
            .map_err(|source| SendFailure::BadReply {
                addr: addr.to_string(),
                source,
            })?;
        let io_err = |source| SendFailure::Io {
            addr: addr.to_string(),
            source,
        };
        let mut arrived = BytesMut::new();
        if framing == Framing::WebSocket {
            arrived = websocket_handshake(&mut *stream, addr, path)
                .await
                .map_err(|reason| SendFailure::Upgrade {
                    addr: addr.to_string(),
                    reason,
                })?;
        }
        stream.write_all(&out).await.map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;
        read_reply(&mut *stream, addr, (framing, arrived), max_frame, plaintext).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SendFailure::Timeout {
            addr: addr.to_string(),
            timeout,
            framing,
        })?
}

/// The framings other than `framing`, for the timeout hint.
fn other_framings(framing: &Framing) -> String {
    [
        Framing::Raw,
        Framing::Lines,
        Framing::LengthPrefixed,
        Framing::Http,
        Framing::WebSocket,
    ]
    .into_iter()
    .filter(|f| f != framing)
    .map(|f| f.name())
    .collect::<Vec<_>>()
    .join(", ")
}

/// A failed client handshake; a reply that is not TLS at all means a plaintext server.
fn tls_failure(addr: &str, source: std::io::Error) -> SendFailure {
    let not_tls = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_)));
    if not_tls {
        SendFailure::NotTls(addr.to_string())
    } else {
        SendFailure::Tls {
            addr: addr.to_string(),
            source,
        }
    }
}

/// Whether `bytes` begin with a TLS record header: an alert (21) or handshake (22) record of
/// TLS 1.0–1.3 (version 3.1–3.4; 3.0 is SSL 3). A TLS server answers a plaintext request with
/// an alert, which would otherwise be printed as if it were the reply.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

/// Reads one frame; for raw framing that is whatever the first read returns. On a plaintext
/// connection, a reply that starts with a TLS record is refused as [`SendFailure::SpeaksTls`].
async fn read_reply(
    stream: &mut dyn ClientIo,
    addr: &str,
    (framing, mut buf): (Framing, BytesMut),
    max_frame: usize,
    plaintext: bool,
) -> Result<Bytes, SendFailure> {
    let mut decoder = framing.client_decoder(max_frame);
    let mut checked = false;
    if let Some(frame) = decoder
        .decode(&mut buf)
        .map_err(|source| SendFailure::BadReply {
            addr: addr.to_string(),
            source,
        })?
    {
        return Ok(frame);
    }
    loop {
        buf.reserve(decoder.read_hint());
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|source| SendFailure::Io {
                addr: addr.to_string(),
                source,
            })?;
        // Only the start of the reply can be a TLS record header; nothing is consumed before
        // a frame is complete, so the buffer still starts with it.
        if plaintext && !checked && buf.len() >= 3 {
            if looks_like_tls(&buf) {
                return Err(SendFailure::SpeaksTls(addr.to_string()));
            }
            checked = true;
        }
        let bad = |source| SendFailure::BadReply {
            addr: addr.to_string(),
            source,
        };
        if n == 0 {
            return match decoder.decode_eof(&mut buf).map_err(bad)? {
                Some(frame) => Ok(frame),
                None => Err(SendFailure::Closed(addr.to_string())),
            };
        }
        if let Some(frame) = decoder.decode(&mut buf).map_err(bad)? {
            return Ok(frame);
        }
    }
}

/// What one line typed in interactive mode becomes on the wire. With length-prefixed framing,
/// the length-prefixed JSON protocol's commands are understood (`/ping`, `/echo TEXT`, `/broadcast TEXT`, `/stats`,
/// `/custom TYPE`); a line that is already a JSON object is sent as it is, other text as a
/// `message`. With other framings the line is sent as it is. `None` means `/exit`.
pub fn interactive_frame(framing: Framing, line: &str) -> Option<Vec<u8>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim() == "/exit" {
        return None;
    }
    if framing != Framing::LengthPrefixed {
        return Some(line.as_bytes().to_vec());
    }
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
    let message = match command {
        "/ping" => {
            serde_json::json!({"type": "ping", "timestamp": now, "client_info": "pier send -i"})
        }
        "/echo" => serde_json::json!({"type": "echo", "content": arg, "timestamp": now}),
        "/broadcast" => serde_json::json!({"type": "broadcast", "content": arg, "timestamp": now}),
        "/stats" => serde_json::json!({"type": "get_stats", "timestamp": now}),
        "/custom" => serde_json::json!({"type": arg, "timestamp": now}),
        _ if line.trim_start().starts_with('{') => return Some(line.as_bytes().to_vec()),
        _ => serde_json::json!({"type": "message", "content": line, "timestamp": now}),
    };
    Some(message.to_string().into_bytes())
}

/// `pier send -i`: sends each line typed on standard input as a frame and prints every frame
/// that arrives, as it arrives, one per line. Ends on `/exit` or end of input (after the server
/// has answered and closed, or `idle` passed without a frame), or when the server closes.
pub async fn interactive(
    addr: &str,
    framing: Framing,
    path: &str,
    max_frame: usize,
    idle: Duration,
) -> Result<(), SendFailure> {
    use tokio::io::AsyncBufReadExt;

    let mut stream = TcpStream::connect(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::ConnectionRefused {
            SendFailure::Refused(addr.to_string())
        } else {
            SendFailure::Connect {
                addr: addr.to_string(),
                source,
            }
        }
    })?;
    stream.set_nodelay(true).ok();
    let io_err = |source| SendFailure::Io {
        addr: addr.to_string(),
        source,
    };
    let mut buf = BytesMut::new();
    if framing == Framing::WebSocket {
        buf = websocket_handshake(&mut stream, addr, path)
            .await
            .map_err(|reason| SendFailure::Upgrade {
                addr: addr.to_string(),
                reason,
            })?;
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut decoder = framing.client_decoder(max_frame);
    let mut input_done = false;
    // Frames that came with the upgrade's answer (a greeting) are printed before anything is read.
    let mut pending = !buf.is_empty();
    loop {
        buf.reserve(decoder.read_hint());
        if std::mem::take(&mut pending) {
            print_frames(&mut decoder, &mut buf, false).map_err(|source| {
                SendFailure::BadReply {
                    addr: addr.to_string(),
                    source,
                }
            })?;
        }
        tokio::select! {
            line = stdin.next_line(), if !input_done => {
                let frame = match line.map_err(io_err)? {
                    Some(line) => interactive_frame(framing, &line),
                    None => None,
                };
                match frame {
                    Some(frame) => {
                        let mut out = BytesMut::new();
                        framing.encode(&frame, &mut out).map_err(|source| SendFailure::BadReply { addr: addr.to_string(), source })?;
                        writer.write_all(&out).await.map_err(io_err)?;
                    }
                    None => {
                        input_done = true;
                        writer.shutdown().await.map_err(io_err)?;
                    }
                }
            }
            read = reader.read_buf(&mut buf) => {
                let n = read.map_err(io_err)?;
                let bad = |source| SendFailure::BadReply { addr: addr.to_string(), source };
                print_frames(&mut decoder, &mut buf, n == 0).map_err(bad)?;
                if n == 0 {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(idle), if input_done => return Ok(()),
        }
    }
}

/// Prints every complete frame in `buf`, one per line (`eof`: the stream has ended).
fn print_frames(
    decoder: &mut crate::net::framing::FrameDecoder,
    buf: &mut BytesMut,
    eof: bool,
) -> Result<(), FrameError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    loop {
        let frame = if eof {
            decoder.decode_eof(buf)
        } else {
            decoder.decode(buf)
        };
        match frame? {
            Some(frame) => {
                let _ = out.write_all(&frame);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            None => return Ok(()),
        }
    }
}

/// What `pier send --repeat N --concurrency K` does.
pub struct Repeat<'a> {
    /// Server address.
    pub addr: String,
    /// How frames are delimited.
    pub framing: Framing,
    /// Largest reply accepted.
    pub max_frame: usize,
    /// Per request: waiting for a connection, sending, the reply.
    pub timeout: Duration,
    /// How many requests in all.
    pub requests: u64,
    /// How many at once (and so pooled connections at most).
    pub concurrency: u64,
    /// TLS options.
    pub tls: &'a crate::net::tls::client::ClientTlsArgs,
}

/// What a repeated send did.
#[derive(Debug)]
pub struct RepeatSummary {
    /// Requests sent.
    pub requests: u64,
    /// Requests in flight at once.
    pub concurrency: u64,
    /// Replies received.
    pub ok: u64,
    /// Failures by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Connections the pool opened (at most `concurrency` unless the server closed some).
    pub opened: u64,
    /// The first reply, printed like a single send's.
    pub first_reply: Option<Bytes>,
    /// Wall time.
    pub elapsed: Duration,
    /// Median and 99th percentile request latency.
    pub p50: Duration,
    /// See `p50`.
    pub p99: Duration,
}

impl RepeatSummary {
    /// Requests that got no reply.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

impl std::fmt::Display for RepeatSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "pier send: {} requests, {} at a time over pooled connections ({} opened): {} ok, {} failed",
            self.requests,
            self.concurrency,
            self.opened,
            self.ok,
            self.failed()
        )?;
        for (reason, n) in &self.failures {
            write!(f, " ({n} {reason})")?;
        }
        write!(
            f,
            " in {:.2?} ({rate:.0} req/s), latency p50 {:.2?} p99 {:.2?}",
            self.elapsed, self.p50, self.p99
        )
    }
}

/// Sends `message` `requests` times with `concurrency` in flight over one connection pool —
/// the same pool plugins use for upstreams, so connections are reused, never more than
/// `concurrency` are open, and a connection the server closed is replaced, not reused.
pub async fn repeat(args: Repeat<'_>, message: Vec<u8>) -> anyhow::Result<RepeatSummary> {
    use crate::upstream::{Pool, UpstreamSpec, UpstreamTls};
    let tls = args.tls.tls.then(|| UpstreamTls {
        ca: args.tls.ca.clone(),
        cert: args.tls.cert.clone(),
        key: args.tls.key.clone(),
        server_name: args.tls.server_name.clone(),
        verify: !args.tls.insecure,
    });
    let pool = Pool::new(UpstreamSpec {
        name: "send".into(),
        addresses: vec![args.addr.clone()],
        framing: args.framing,
        max_frame: args.max_frame,
        max_size: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        idle_timeout: Duration::from_secs(3600),
        connect_timeout: args.timeout,
        request_timeout: args.timeout,
        tls,
    })?;
    let message = Bytes::from(message);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.requests) {
        let (pool, message, next) = (pool.clone(), message.clone(), next.clone());
        let total = args.requests;
        tasks.spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let sent = std::time::Instant::now();
                let result = pool.request(message.clone()).await;
                results.push((result, sent.elapsed()));
            }
            results
        });
    }
    let mut summary = RepeatSummary {
        requests: args.requests,
        concurrency: args.concurrency,
        ok: 0,
        failures: Default::default(),
        opened: 0,
        first_reply: None,
        elapsed: Duration::ZERO,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
    };
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for (result, took) in done.unwrap_or_default() {
            latencies.push(took);
            match result {
                Ok(reply) => {
                    summary.ok += 1;
                    summary.first_reply.get_or_insert(reply);
                }
                Err(err) => *summary.failures.entry(err.name()).or_default() += 1,
            }
        }
    }
    summary.elapsed = started.elapsed();
    summary.opened = pool.opened();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    summary.p50 = at(0.5);
    summary.p99 = at(0.99);
    Ok(summary)
}
