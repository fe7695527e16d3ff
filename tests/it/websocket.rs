//! WebSocket framing over real sockets: two independent Python clients (`websockets`,
//! `websocket-client`), raw frames for what those clients refuse to send, the upgrade's
//! refusals, the chat room behind a line door and a WebSocket door, and the page in a real
//! browser (headless Debian chromium through Playwright).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use crate::support::served::{Served, tmp};
use crate::support::{WAIT, guest_file, scratch_dir, venv};

/// A raw WebSocket client: frames written byte for byte, server frames read back.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and upgrades (asserting the 101) with `extra` request headers.
    fn open(addr: &str, extra: &str) -> Raw {
        let (raw, head) = Raw::request(addr, extra);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        raw.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        raw
    }

    /// Sends an upgrade request and returns the answer's head.
    fn request(addr: &str, extra: &str) -> (Raw, String) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        .expect("send the upgrade");
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
                raw.buf.drain(..end + 4);
                break head;
            }
            assert!(raw.fill(), "closed before answering the upgrade");
        };
        (raw, head)
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Writes one masked frame with first byte `first` (FIN, RSV, opcode).
    fn frame(&mut self, first: u8, payload: &[u8]) {
        let bytes = client_frame(first, payload, true);
        self.stream.write_all(&bytes).expect("write a frame");
    }

    /// The next server frame: (first byte, payload); `None` once the server closed.
    fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (len, head) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if head > 0 && self.buf.len() >= head + len {
                    let first = self.buf[0];
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some((first, payload));
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads until the server's close frame and returns its status code.
    fn close_code(&mut self) -> u16 {
        loop {
            match self.next() {
                Some((0x88, payload)) if payload.len() >= 2 => {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Some(_) => continue,
                None => panic!("closed without a close frame"),
            }
        }
    }

    /// Reads until the server has closed the TCP connection; true if it did within [`WAIT`].
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }
}

/// A client frame, masked with a fixed key (or not, to break the protocol).
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Runs a Python script with the WebSocket venv; asserts it succeeded and returns its output.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(venv::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A pier.toml in a scratch folder for `test`; returns its path.
fn config(test: &str, text: &str) -> std::path::PathBuf {
    let path = scratch_dir(test).join("pier.toml");
    std::fs::write(&path, text).expect("write pier.toml");
    path
}

/// The built-in chat on a lines listener with a WebSocket door, as `examples/pier.toml` has it.
fn chat_with_a_websocket_door(test: &str) -> Served {
    let path = config(
        test,
        r#"
[[listener]]
name = "chat"
address = "127.0.0.1:0"
plugin = "chat"
framing = "lines"

[[listener.door]]
address = "127.0.0.1:0"
framing = "websocket"
"#,
    );
    serve_config(&path, 2)
}

fn serve_config(path: &Path, listeners: usize) -> Served {
    Served::start_listeners(&["--config", path.to_str().expect("utf-8")], listeners)
}

#[test]
fn the_websockets_library_echoes_text_binary_every_length_boundary_and_fragments() {
    let served = Served::start(&["echo", "--framing", "websocket"]);
    let script = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect("ws://" + sys.argv[1] + "/", max_size=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "Echo: hello"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"Echo: \x00\xff"
        for n in [0, 125, 126, 65535, 65536]:
            await ws.send("t" * n)
            reply = await ws.recv()
            assert reply == "Echo: " + "t" * n, (n, len(reply))
            await ws.send(bytes(n))
            reply = await ws.recv()
            assert reply == b"Echo: " + bytes(n), (n, len(reply))
        await ws.send(["frag", "men", "ted"])
        assert await ws.recv() == "Echo: fragmented"
        await asyncio.wait_for(await ws.ping(b"are you there"), 30)
    assert ws.close_code == 1000, ws.close_code
    print("ok")
asyncio.run(main())
"#;
    assert_eq!(python(script, &[&served.addr]).trim(), "ok");
}

#[test]
fn websocket_client_negotiates_a_subprotocol_and_origins_are_checked() {
    let path = config(
        "ws-subprotocol",
        r#"
[[listener]]
name = "ws"
address = "127.0.0.1:0"
plugin = "echo"
framing = "websocket"
[listener.websocket]
path = "/echo"
protocols = ["v2.echo", "v1.echo"]
origins = ["http://good.example"]
"#,
    );
    let served = serve_config(&path, 1);
    let script = r#"
import sys, websocket
url = "ws://" + sys.argv[1] + "/echo"
ws = websocket.create_connection(url, subprotocols=["v1.echo", "v2.echo"], origin="http://good.example", timeout=30)
assert ws.getsubprotocol() == "v2.echo", ws.getsubprotocol()
ws.send("hi")
assert ws.recv() == "Echo: hi"
ws.close()
try:
    websocket.create_connection(url, origin="http://evil.example", timeout=30)
    raise SystemExit("an unlisted origin was let in")
except websocket.WebSocketBadStatusException as err:
    assert err.status_code == 403, err.status_code
print("ok")
"#;
    assert_eq!(python(script, &[&served.addr]).trim(), "ok");
    // Wrong path, wrong version: HTTP errors, not upgrades.
    let (mut raw, head) = Raw::request(&served.addr, "");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    assert!(raw.closed());
}

#[test]
fn an_old_protocol_version_gets_426_and_a_plain_get_gets_the_page() {
    let served = Served::start(&["echo", "--framing", "websocket"]);
    let mut stream = TcpStream::connect(&served.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(answer.contains("Sec-WebSocket-Version: 13\r\n"), "{answer}");
    let page = crate::support::served::http_get(&served.addr, "/");
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
    assert!(page.contains("new WebSocket("), "the chat page");
    let missing = crate::support::served::http_get(&served.addr, "/../Cargo.toml");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
}

#[test]
fn protocol_violations_get_their_close_codes_and_the_server_keeps_serving() {
    let served = Served::start(&["echo", "--framing", "websocket"]);
    let long_ping = vec![b'p'; 126];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", client_frame(0x81, b"hi", false), 1002),
        ("RSV1 set", client_frame(0xC1, b"hi", true), 1002),
        ("RSV3 set", client_frame(0x91, b"hi", true), 1002),
        ("data opcode 3", client_frame(0x83, b"hi", true), 1002),
        ("control opcode 11", client_frame(0x8B, b"", true), 1002),
        ("continuation first", client_frame(0x80, b"hi", true), 1002),
        ("fragmented ping", client_frame(0x09, b"", true), 1002),
        ("126-byte ping", client_frame(0x89, &long_ping, true), 1002),
        (
            "invalid UTF-8 text",
            client_frame(0x81, &[0xCE, 0xBA, 0xFF], true),
            1007,
        ),
        (
            "close code 1005",
            client_frame(0x88, &[0x03, 0xED], true),
            1002,
        ),
        ("one-byte close", client_frame(0x88, &[0x03], true), 1002),
        (
            "new message inside a fragmented one",
            [
                client_frame(0x01, b"a", true),
                client_frame(0x81, b"b", true),
            ]
            .concat(),
            1002,
        ),
        (
            "invalid UTF-8 in a later fragment",
            [
                client_frame(0x01, "κό".as_bytes(), true),
                client_frame(0x00, &[0xF4, 0x90], true),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, wire, code) in cases {
        let mut raw = Raw::open(&served.addr, "");
        raw.stream.write_all(&wire).expect("send");
        assert_eq!(raw.close_code(), code, "{what}");
        assert!(raw.closed(), "{what}: the server closes the connection");
    }
    let mut raw = Raw::open(&served.addr, "");
    raw.frame(0x81, b"still here");
    assert_eq!(raw.next(), Some((0x81, b"Echo: still here".to_vec())));
}

#[test]
fn fragments_with_interleaved_pings_are_one_message_and_the_close_is_answered() {
    let served = Served::start(&["echo", "--framing", "websocket"]);
    let mut raw = Raw::open(&served.addr, "");
    let wire = [
        client_frame(0x01, b"frag", true),
        client_frame(0x89, b"ping 1", true),
        client_frame(0x00, b"men", true),
        client_frame(0x8A, b"unsolicited pong", true),
        client_frame(0x89, b"ping 2", true),
        client_frame(0x80, b"ted", true),
    ]
    .concat();
    // Byte by byte: every boundary inside a header, a mask and a payload is crossed.
    for byte in wire {
        raw.stream.write_all(&[byte]).expect("send");
    }
    assert_eq!(raw.next(), Some((0x8A, b"ping 1".to_vec())));
    assert_eq!(raw.next(), Some((0x8A, b"ping 2".to_vec())));
    assert_eq!(raw.next(), Some((0x81, b"Echo: fragmented".to_vec())));
    // A binary message gets a binary reply, an empty one too.
    raw.frame(0x82, b"");
    assert_eq!(raw.next(), Some((0x82, b"Echo: ".to_vec())));
    // The client closes: the host answers with the same code and closes the socket.
    raw.frame(0x88, &[0x0B, 0xB8, b'b', b'y', b'e']);
    assert_eq!(raw.next(), Some((0x88, vec![0x0B, 0xB8])));
    assert!(raw.closed());
}

#[test]
fn a_message_above_max_frame_is_refused_from_its_header_without_buffering_it() {
    let served = Served::start(&["echo", "--framing", "websocket", "--max-frame", "64KiB"]);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    };
    let mut raw = Raw::open(&served.addr, "");
    raw.frame(0x81, b"warm up");
    assert!(raw.next().is_some());
    let before = rss();
    // Ten connections each claim a 1 GiB message and send its first bytes.
    for _ in 0..10 {
        let mut raw = Raw::open(&served.addr, "");
        let mut wire = vec![0x82, 0xFF];
        wire.extend_from_slice(&(1u64 << 30).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        wire.extend_from_slice(&[0; 1000]);
        raw.stream.write_all(&wire).expect("send");
        assert_eq!(raw.close_code(), 1009);
    }
    // Fragments count together: two 40 KiB fragments pass 64 KiB.
    let mut raw = Raw::open(&served.addr, "");
    raw.frame(0x02, &[0; 40 * 1024]);
    raw.frame(0x80, &[0; 40 * 1024]);
    assert_eq!(raw.close_code(), 1009);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "the server grew by {grown} bytes for claimed sizes it must not buffer"
    );
    // A message of exactly the limit is fine.
    let mut raw = Raw::open(&served.addr, "");
    raw.frame(0x82, &vec![7; 64 * 1024 - 6]);
    assert_eq!(raw.next().map(|(_, p)| p.len()), Some(64 * 1024));
}

#[test]
fn a_client_that_never_finishes_the_upgrade_is_timed_out_and_counted() {
    let path = config(
        "ws-handshake-timeout",
        r#"
[admin]
address = "127.0.0.1:0"
[[listener]]
name = "ws"
address = "127.0.0.1:0"
plugin = "echo"
framing = "websocket"
[listener.websocket]
handshake_timeout = "300ms"
"#,
    );
    let served = serve_config(&path, 1);
    let mut stream = TcpStream::connect(&served.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .expect("half a request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let metrics = crate::support::served::http_get(&served.admin_addr(), "/metrics");
    assert!(
        metrics.contains(
            "pier_websocket_handshakes_refused_total{listener=\"ws\",reason=\"timeout\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn a_faulting_plugin_closes_only_its_websocket_with_1011() {
    let faulty = guest_file("pier_faulty.wasm");
    let served = Served::start(&[faulty.to_str().expect("utf-8"), "--framing", "websocket"]);
    let mut good = Raw::open(&served.addr, "");
    let mut bad = Raw::open(&served.addr, "");
    bad.frame(0x81, b"trap");
    assert_eq!(bad.close_code(), 1011);
    good.frame(0x81, b"fine");
    assert_eq!(good.next(), Some((0x81, b"Echo: fine".to_vec())));
}

#[test]
fn the_plugin_closing_the_connection_sends_1000() {
    let served = Served::start(&["chat", "--framing", "websocket"]);
    let mut raw = Raw::open(&served.addr, "");
    assert!(
        raw.next()
            .is_some_and(|(_, greeting)| greeting.starts_with(b"Welcome"))
    );
    raw.frame(0x81, b"dora");
    assert!(raw.next().is_some());
    raw.frame(0x81, b"/quit");
    assert_eq!(raw.close_code(), 1000);
    // The same through a client that checks the closing handshake: the host's close, the
    // client's answer, then the TCP close — a clean close on both sides.
    let script = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect("ws://" + sys.argv[1] + "/") as ws:
        assert "Enter your name" in await ws.recv()
        await ws.send("eve")
        assert (await ws.recv()).startswith("Hello eve")
        await ws.send("/quit")
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosedOK as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
            assert closed.rcvd_then_sent, "the server closed first"
    print("ok")
asyncio.run(main())
"#;
    assert_eq!(python(script, &[&served.addr]).trim(), "ok");
}

#[test]
fn one_chat_room_through_a_line_door_and_a_websocket_door() {
    let served = chat_with_a_websocket_door("ws-doors");
    let lines = served.addr_of("chat");
    let ws = served.door_of("chat");
    let script = r#"
import socket, sys, websocket
ws = websocket.create_connection("ws://" + sys.argv[1] + "/", timeout=30)
assert "Enter your name" in ws.recv()
ws.send("web")
assert ws.recv().startswith("Hello web")
host, port = sys.argv[2].rsplit(":", 1)
line = socket.create_connection((host, int(port)), timeout=30).makefile("rwb")
def read_line():
    got = line.readline().decode().rstrip("\n")
    assert got, "the line client was closed"
    return got
assert "Enter your name" in read_line()
line.write(b"term\n"); line.flush()
assert read_line().startswith("Hello term")
assert ws.recv() == "term joined the chat"
ws.send("hi from the browser side")
assert read_line() == "web: hi from the browser side"
line.write(b"hi from nc\n"); line.flush()
assert ws.recv() == "term: hi from nc"
ws.send("/list")
assert ws.recv() == "Online (2): term, web"
ws.close()
assert read_line() == "web left the chat"
print("ok")
"#;
    assert_eq!(python(script, &[&ws, &lines]).trim(), "ok");
}

#[test]
fn the_chat_page_in_two_browser_tabs_and_a_line_client_share_one_room() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed (`.ci/run` installs it: apt-get install chromium)"
    );
    let served = chat_with_a_websocket_door("ws-browser");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/it/scripts/browser_chat.py");
    let shot = tmp().join("websocket-chat.png");
    let out = Command::new(venv::python())
        .arg(&script)
        .arg(format!("http://{}/", served.door_of("chat")))
        .arg(served.addr_of("chat"))
        .arg(&shot)
        .output()
        .expect("run the browser script");
    assert!(
        out.status.success(),
        "browser chat failed:\n{}\n{}\npier log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        served.log()
    );
    assert!(shot.exists(), "the script took a screenshot");
}

#[test]
fn wss_uses_the_listeners_tls_settings() {
    let (certs, _) = crate::support::served::certificates("ws-tls-certs", &[]);
    let pem = |name: &str| certs.join(name).to_str().expect("utf-8").to_string();
    let served = Served::start(&[
        "echo",
        "--framing",
        "websocket",
        "--tls-cert",
        &pem("server.pem"),
        "--tls-key",
        &pem("server-key.pem"),
    ]);
    let script = r#"
import asyncio, ssl, sys, websockets
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with websockets.connect("wss://localhost:" + sys.argv[1].rsplit(":", 1)[1] + "/", ssl=ctx) as ws:
        await ws.send("secret")
        assert await ws.recv() == "Echo: secret"
    print("ok")
asyncio.run(main())
"#;
    assert_eq!(python(script, &[&served.addr, &pem("ca.pem")]).trim(), "ok");
    // pier's own client, over the same TLS.
    let out = crate::support::served::pier()
        .args([
            "send",
            "--framing",
            "websocket",
            "--tls",
            "--ca",
            &pem("ca.pem"),
            &served.addr,
            "hi",
        ])
        .output()
        .expect("pier send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: hi\n");
}

#[test]
fn per_address_admission_applies_before_the_upgrade() {
    let path = config(
        "ws-admission",
        r#"
[[listener]]
name = "ws"
address = "127.0.0.1:0"
plugin = "echo"
framing = "websocket"
[listener.limits]
max_connections_per_address = 1
"#,
    );
    let served = serve_config(&path, 1);
    let mut first = Raw::open(&served.addr, "");
    // The second connection from the same address is closed before any upgrade answer.
    let mut second = TcpStream::connect(&served.addr).expect("connect");
    second.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = second.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    first.frame(0x81, b"first");
    assert_eq!(first.next(), Some((0x81, b"Echo: first".to_vec())));
}

#[test]
fn shutdown_closes_websockets_with_1001_and_idle_ones_get_1008() {
    let path = config(
        "ws-goodbyes",
        r#"
[[listener]]
name = "ws"
address = "127.0.0.1:0"
plugin = "echo"
framing = "websocket"
[listener.limits]
idle_timeout = "300ms"
[[listener.door]]
address = "127.0.0.1:0"
framing = "websocket"
"#,
    );
    let mut served = serve_config(&path, 2);
    let mut idle = Raw::open(&served.addr, "");
    assert_eq!(idle.close_code(), 1008);
    let mut open = Raw::open(&served.door_of("ws"), "");
    open.frame(0x81, b"x");
    assert!(open.next().is_some());
    served.signal("TERM");
    assert_eq!(open.close_code(), 1001);
    served.wait_exit();
}

#[test]
fn pier_send_speaks_websocket_and_prints_the_greeting() {
    let served = Served::start(&["chat", "--framing", "websocket"]);
    let out = crate::support::served::pier()
        .args(["send", "--framing", "websocket", &served.addr, "ignored"])
        .output()
        .expect("pier send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Welcome to pier chat! Enter your name:\n"
    );
    let out = crate::support::served::pier()
        .args([
            "send",
            "--framing",
            "websocket",
            "--path",
            "/nowhere",
            &served.addr,
            "x",
        ])
        .output()
        .expect("pier send");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WebSocket upgrade to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
