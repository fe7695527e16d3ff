//! The WebSocket opening handshake (RFC 6455 §4) on a `websocket` door, and the page a browser
//! gets from the same port.
//!
//! It runs in the connection's task after admission and TLS, before the plugin's `on-open`, under
//! the door's handshake timeout, so the 101 is on the wire before any greeting the plugin sends
//! and a client that never finishes its request costs only its own task. httparse reads the
//! request (at most [`MAX_REQUEST`] bytes); tungstenite derives `Sec-WebSocket-Accept`.
//!
//! A plain `GET` (no `Upgrade`) is answered with a page and the connection closes: the built-in
//! chat page, or files from `websocket.static_dir`. Anything else gets an HTTP error and is
//! counted in `pier_websocket_handshakes_refused_total{reason}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use tracing::{debug, warn};

use crate::net::framing::websocket::Replies;
use crate::net::transport::Transport;
use crate::ops::metrics::ListenerMetrics;

/// The largest upgrade request accepted (request line and headers).
pub const MAX_REQUEST: usize = 16 * 1024;
/// Most headers in an upgrade request.
const MAX_HEADERS: usize = 64;
/// The largest file served from `static_dir`.
pub const MAX_STATIC_FILE: u64 = 4 * 1024 * 1024;
/// Default `websocket.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The built-in page: a chat client for any line-oriented plugin (each line typed is one
/// message, each message received is one line), with no build step and no external resource.
const PAGE: &str = include_str!("../../assets/chat.html");
/// Where the page learns which path to connect to.
const PAGE_PATH_MARK: &str = "\"__PIER_WS_PATH__\"";

/// A `websocket` door's settings (pier.toml `[listener.websocket]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSocketSettings {
    /// The path upgrades are accepted on (default `/`).
    pub path: String,
    /// Subprotocols the server speaks, in preference order; the first one the client offers is
    /// chosen. Empty: none is negotiated.
    pub protocols: Vec<String>,
    /// `Origin`s allowed to connect (e.g. `https://chat.example.com`); empty: any. A request
    /// without `Origin` (not from a browser) is allowed either way.
    pub origins: Vec<String>,
    /// Text or binary replies.
    pub replies: Replies,
    /// Where plain `GET`s are served from; `None`: the built-in chat page at `/`.
    pub static_dir: Option<PathBuf>,
    /// Longest the upgrade request may take to arrive.
    pub handshake_timeout: Duration,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        WebSocketSettings {
            path: "/".into(),
            protocols: Vec::new(),
            origins: Vec::new(),
            replies: Replies::Auto,
            static_dir: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl WebSocketSettings {
    /// Refuses settings that cannot work: a path that is not absolute or would need escaping.
    pub fn check(&self) -> Result<(), String> {
        let safe = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
        if !self.path.starts_with('/') || !self.path.chars().all(safe) {
            return Err(format!(
                "websocket.path `{}` must start with / and use only letters, digits and /-._~",
                self.path
            ));
        }
        Ok(())
    }
}

/// How the handshake ended.
pub enum Upgrade {
    /// The connection is a WebSocket now; `leftover` holds bytes the client sent after its
    /// request (its first frames).
    Open {
        /// Bytes already read past the request.
        leftover: BytesMut,
        /// The subprotocol chosen, if any.
        protocol: Option<String>,
    },
    /// The host answered (a page, or an error) and the connection ends.
    Answered,
}

/// A refusal: the counted reason, the HTTP status, and what the client is told.
struct Refusal {
    reason: &'static str,
    status: u16,
    message: String,
}

fn refuse(reason: &'static str, status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        status,
        message: message.into(),
    }
}

/// Reads the client's request and answers it: 101 and [`Upgrade::Open`], or a page or an error
/// and [`Upgrade::Answered`] (written, and logged when refused).
pub async fn accept(
    transport: &mut Transport,
    settings: &WebSocketSettings,
    metrics: &ListenerMetrics,
) -> Upgrade {
    let mut buf = BytesMut::new();
    let read = tokio::time::timeout(
        settings.handshake_timeout,
        read_request(transport, &mut buf),
    );
    let refusal = match read.await {
        Err(_) => refuse(
            "timeout",
            408,
            format!(
                "upgrade request not complete within {:?}",
                settings.handshake_timeout
            ),
        ),
        Ok(Err(refusal)) => refusal,
        Ok(Ok(head)) => match respond(&buf[..head], settings).await {
            Ok(Response::Upgrade { reply, protocol }) => {
                let _ = buf.split_to(head);
                if let Err(err) = transport.write_all(&reply).await {
                    debug!("cannot write the 101: {err}");
                    return Upgrade::Answered;
                }
                return Upgrade::Open {
                    leftover: buf,
                    protocol,
                };
            }
            Ok(Response::Page(reply)) => {
                let _ = transport.write_all(&reply).await;
                let _ = transport.shutdown().await;
                return Upgrade::Answered;
            }
            Err(refusal) => refusal,
        },
    };
    metrics.websocket_refused(refusal.reason);
    warn!(
        reason = refusal.reason,
        "WebSocket upgrade refused: {}", refusal.message
    );
    if refusal.reason != "closed" {
        let extra: &[&str] = if refusal.status == 426 {
            &["Sec-WebSocket-Version: 13"]
        } else {
            &[]
        };
        let body = format!("{}\n", refusal.message);
        let reply = http_response(
            refusal.status,
            "text/plain; charset=utf-8",
            extra,
            body.as_bytes(),
        );
        let _ = transport.write_all(&reply).await;
        let _ = transport.shutdown().await;
    }
    Upgrade::Answered
}

/// Reads until the request head is complete; its length. The head is parsed once its blank
/// line has arrived (or when its first byte cannot start a request), so a request trickling in a
/// byte at a time costs linear, not quadratic, work.
async fn read_request(transport: &mut Transport, buf: &mut BytesMut) -> Result<usize, Refusal> {
    let mut searched = 0;
    loop {
        let ended = buf[searched..].windows(4).any(|w| w == b"\r\n\r\n");
        searched = buf.len().saturating_sub(3);
        let garbage = buf.first().is_some_and(|b| !b.is_ascii_uppercase());
        if ended || garbage {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buf) {
                Ok(httparse::Status::Complete(head)) => return Ok(head),
                Ok(httparse::Status::Partial) => {}
                Err(err) => {
                    let message = format!("malformed request: {err}");
                    return Err(refuse("malformed", 400, message));
                }
            }
        }
        if buf.len() >= MAX_REQUEST {
            return Err(refuse(
                "malformed",
                431,
                format!("request head larger than {MAX_REQUEST} bytes"),
            ));
        }
        let room = MAX_REQUEST - buf.len();
        match transport.read_some(buf, room).await {
            Ok(0) | Err(_) => {
                return Err(refuse(
                    "closed",
                    400,
                    "client closed before its request ended",
                ));
            }
            Ok(_) => {}
        }
    }
}

enum Response {
    Upgrade {
        reply: Vec<u8>,
        protocol: Option<String>,
    },
    Page(Vec<u8>),
}

/// The answer to a complete request head.
async fn respond(head: &[u8], settings: &WebSocketSettings) -> Result<Response, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request
        .parse(head)
        .map_err(|err| refuse("malformed", 400, format!("malformed request: {err}")))?;
    let header = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<&str>>()
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if method != "GET" {
        return Err(refuse(
            "not-upgrade",
            405,
            format!("method {method} not allowed"),
        ));
    }
    if !has_token("upgrade", "websocket") {
        return page(path, settings).await.map(Response::Page);
    }
    if request.version != Some(1) {
        return Err(refuse(
            "malformed",
            400,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !has_token("connection", "upgrade") {
        return Err(refuse(
            "not-upgrade",
            400,
            "Connection header lacks `upgrade`",
        ));
    }
    if !header("sec-websocket-version")
        .iter()
        .any(|v| v.trim() == "13")
    {
        return Err(refuse(
            "version",
            426,
            "only WebSocket version 13 is spoken",
        ));
    }
    let key = match header("sec-websocket-key").as_slice() {
        [key] if key.trim().len() == 24 => key.trim().to_string(),
        _ => {
            return Err(refuse(
                "malformed",
                400,
                "missing or malformed Sec-WebSocket-Key",
            ));
        }
    };
    if path != settings.path {
        return Err(refuse("path", 404, format!("no WebSocket at {path}")));
    }
    if !settings.origins.is_empty()
        && let Some(origin) = header("origin").first()
        && !settings
            .origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin.trim()))
    {
        return Err(refuse(
            "origin",
            403,
            format!("origin {origin} is not allowed"),
        ));
    }
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let protocol = settings
        .protocols
        .iter()
        .find(|p| offered.contains(&p.as_str()))
        .cloned();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(protocol) = &protocol {
        reply.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    reply.push_str("\r\n");
    Ok(Response::Upgrade {
        reply: reply.into_bytes(),
        protocol,
    })
}

/// The answer to a plain `GET`: the built-in page, or a file of `static_dir`.
async fn page(path: &str, settings: &WebSocketSettings) -> Result<Vec<u8>, Refusal> {
    let not_found = || refuse("not-upgrade", 404, format!("nothing at {path}"));
    let name = match path {
        "/" => "index.html",
        other => other.strip_prefix('/').unwrap_or(other),
    };
    // One plain file name: no directories, nothing hidden, so no way out of the folder.
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !plain {
        return Err(not_found());
    }
    let Some(dir) = &settings.static_dir else {
        if name != "index.html" {
            return Err(not_found());
        }
        let path_literal = serde_json::to_string(&settings.path).unwrap_or_else(|_| "\"/\"".into());
        let body = PAGE.replace(PAGE_PATH_MARK, &path_literal);
        return Ok(http_response(
            200,
            "text/html; charset=utf-8",
            &[
                "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
             style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
            ],
            body.as_bytes(),
        ));
    };
    let body = read_static(&dir.join(name)).await.ok_or_else(not_found)?;
    Ok(http_response(200, content_type(name), &[], &body))
}

/// A regular file of at most [`MAX_STATIC_FILE`] bytes, or `None`.
async fn read_static(path: &Path) -> Option<Vec<u8>> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if !meta.is_file() || meta.len() > MAX_STATIC_FILE {
        return None;
    }
    tokio::fs::read(path).await.ok()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A whole response with `body`; the connection closes after it.
fn http_response(status: u16, content_type: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let title = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {title}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut reply = head.into_bytes();
    reply.extend_from_slice(body);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_executor::block_on(f)
    }

    #[test]
    fn the_rfc_sample_key_gets_the_rfc_accept_value() {
        let settings = WebSocketSettings::default();
        let Ok(Response::Upgrade { reply, protocol }) =
            block_on(respond(upgrade_request("").as_bytes(), &settings))
        else {
            panic!("not upgraded");
        };
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
        assert!(reply.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(protocol, None);
    }

    #[test]
    fn origins_protocols_and_versions_are_checked() {
        let settings = WebSocketSettings {
            origins: vec!["http://good.example".into()],
            protocols: vec!["chat".into(), "v2".into()],
            ..WebSocketSettings::default()
        };
        let status =
            |extra: &str| match block_on(respond(upgrade_request(extra).as_bytes(), &settings)) {
                Ok(Response::Upgrade { protocol, .. }) => Ok(protocol),
                Ok(Response::Page(_)) => Err(200),
                Err(refusal) => Err(refusal.status),
            };
        assert_eq!(status("Origin: http://evil.example\r\n"), Err(403));
        assert_eq!(
            status("Origin: http://good.example\r\nSec-WebSocket-Protocol: v2, chat\r\n"),
            Ok(Some("chat".into()))
        );
        assert_eq!(status("Sec-WebSocket-Protocol: other\r\n"), Ok(None));
        let old = upgrade_request("").replace("Version: 13", "Version: 8");
        assert!(matches!(
            block_on(respond(old.as_bytes(), &settings)),
            Err(Refusal { status: 426, .. })
        ));
    }

    #[test]
    fn a_plain_get_gets_the_page_and_nothing_else_leaves_the_folder() {
        let settings = WebSocketSettings {
            path: "/ws".into(),
            ..WebSocketSettings::default()
        };
        let Ok(Response::Page(page)) =
            block_on(respond(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &settings))
        else {
            panic!("no page");
        };
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.contains("\"/ws\""),
            "the page connects to the configured path"
        );
        assert!(!page.contains(PAGE_PATH_MARK));
        for bad in ["/../Cargo.toml", "/.env", "/a/b", "/%2e%2e"] {
            let request = format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(
                matches!(
                    block_on(respond(request.as_bytes(), &settings)),
                    Err(Refusal { status: 404, .. })
                ),
                "{bad}"
            );
        }
    }
}
