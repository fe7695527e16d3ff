//! The PROXY protocol behind a real HAProxy (Debian's `haproxy`, started by the test on free
//! ports, `send-proxy-v2` and `send-proxy`) in front of two pier processes: the plugin sees the
//! client's address, per-address limits count it, and headers that are missing, forged by an
//! untrusted host or garbage are refused and counted. HAProxy runs the example config the
//! README shows (`examples/fleet/haproxy.cfg`).
//!
//! Clients bind distinct loopback source addresses (127.0.0.2, .3, ...) so "the client's
//! address" differs from HAProxy's own (127.0.0.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::served::{Served, admin_connections, http_get};
use crate::support::{WAIT, guest_file, ports, scratch_dir};

/// HAProxy, killed on drop.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The HAProxy config the README's "Running several nodes" shows, addresses from the
/// environment.
fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet/haproxy.cfg")
}

/// Starts HAProxy with the example config, balancing over the pier nodes `servers` (one or two)
/// round robin with `send-proxy-v2` or `send-proxy` (`option`); returns it and its address.
fn haproxy(servers: &[String], option: &str) -> (Haproxy, String) {
    let listen = format!("127.0.0.1:{}", ports::reserved_port());
    // Its own health page tells when it is up: a probe of `listen` would reach pier as a
    // client and leave again, which plugins see.
    let monitor = format!("127.0.0.1:{}", ports::reserved_port());
    let (a, b) = match servers {
        [a] => (a, a),
        [a, b] => (a, b),
        _ => panic!("the example config names two servers"),
    };
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(example_config())
        .envs([
            ("HAPROXY_LISTEN", listen.as_str()),
            ("HAPROXY_MONITOR", monitor.as_str()),
            ("PIER_A", a),
            ("PIER_B", b),
            ("PIER_PROXY", option),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("haproxy (Debian package `haproxy`, installed by .ci/run) must be installed");
    let proxy = Haproxy(child);
    let deadline = Instant::now() + WAIT;
    while !http_get_opt(&monitor, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "haproxy never answered on {monitor}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (proxy, listen)
}

/// Like `http_get`, `None` while nothing listens.
fn http_get_opt(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn the_readme_shows_the_example_haproxy_config() {
    let config = std::fs::read_to_string(example_config()).expect("the example config");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    assert!(
        readme.contains(&config),
        "README.md's \"Running several nodes\" must show examples/fleet/haproxy.cfg as it is"
    );
}

/// A line client connected to `addr` from source address `from`.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    local: SocketAddr,
}

impl Client {
    fn connect(addr: &str, from: &str) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let source: SocketAddr = format!("{from}:0").parse().expect("source address");
        socket
            .bind(&source.into())
            .expect("bind the source address");
        let target: SocketAddr = addr.parse().expect("address");
        socket.connect(&target.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let local = stream.local_addr().expect("local address");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
            local,
        }
    }

    /// The next line, or `None` once the connection is closed.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_string()),
        }
    }

    fn ask(&mut self, line: &str) -> Option<String> {
        writeln!(self.writer, "{line}").ok()?;
        self.line()
    }
}

/// `testkit` on a lines listener that takes PROXY headers (v1 or v2) from 127.0.0.1 only,
/// one connection per client address, with an admin endpoint.
fn pier_behind_haproxy(test: &str) -> Served {
    let testkit = guest_file("pier_testkit.wasm");
    let config = scratch_dir(test).join("pier.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
address = "127.0.0.1:0"
[[listener]]
name = "lb"
address = "127.0.0.1:0"
plugin = "{}"
framing = "lines"
proxy_protocol = "any"
proxy_from = ["127.0.0.1/32"]
[listener.limits]
max_connections_per_address = 1
"#,
            testkit.display()
        ),
    )
    .expect("write pier.toml");
    Served::start(&["--config", config.to_str().expect("utf-8")])
}

#[test]
fn behind_haproxy_two_pier_processes_see_each_clients_real_address() {
    let first = pier_behind_haproxy("proxy-a");
    let second = pier_behind_haproxy("proxy-b");
    let nodes = [first.addr.clone(), second.addr.clone()];
    let (_v2_proxy, v2) = haproxy(&nodes, "send-proxy-v2");
    let (_v1_proxy, v1) = haproxy(&nodes, "send-proxy");
    let mut clients = Vec::new();
    for (i, frontend) in [&v2, &v2, &v1, &v1].into_iter().enumerate() {
        let mut client = Client::connect(frontend, &format!("127.0.0.{}", i + 2));
        let welcome = client.line().expect("a greeting through haproxy");
        assert!(welcome.starts_with("welcome "), "{welcome}");
        let whoami = client.ask("whoami").expect("whoami");
        assert!(
            whoami.contains(&format!(" {} lb", client.local)),
            "the plugin sees {whoami:?}, the client is {}",
            client.local
        );
        clients.push(client);
    }
    // Balanced over both pier processes, every connection listed under its client's address.
    let mut peers: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|served| admin_connections(&served.admin_addr()))
        .map(|entry| entry["peer"].as_str().unwrap_or_default().to_string())
        .collect();
    peers.sort();
    let mut expected: Vec<String> = clients.iter().map(|c| c.local.to_string()).collect();
    expected.sort();
    assert_eq!(peers, expected);
    for served in [&first, &second] {
        assert!(
            !admin_connections(&served.admin_addr()).is_empty(),
            "HAProxy used both pier processes"
        );
    }
    // Every client's own address, though all of them came from HAProxy's 127.0.0.1.
    let mut fresh = Client::connect(&v1, "127.0.0.9");
    assert!(fresh.line().is_some_and(|l| l.starts_with("welcome ")));
    let whoami = fresh.ask("whoami").expect("whoami");
    assert!(whoami.contains(&format!(" {} lb", fresh.local)), "{whoami}");
}

#[test]
fn missing_forged_and_garbage_headers_are_refused_and_counted() {
    let served = pier_behind_haproxy("proxy-refusals");
    let refused = |from: &str, bytes: &[u8]| {
        let mut client = Client::connect(&served.addr, from);
        let _ = client.writer.write_all(bytes);
        let mut rest = Vec::new();
        let _ = client.reader.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "answered: {}",
            String::from_utf8_lossy(&rest)
        );
    };
    // From the trusted balancer's address but without a header, or with garbage.
    refused("127.0.0.1", b"whoami\n");
    refused("127.0.0.1", b"PROXY TCP4 not an address\r\n");
    refused("127.0.0.1", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff");
    // A well-formed header from a host that is not a trusted balancer: a forgery.
    refused("127.0.0.7", b"PROXY TCP4 10.1.2.3 127.0.0.1 4000 80\r\n");
    let metrics = http_get(&served.admin_addr(), "/metrics");
    for (reason, count) in [
        ("missing", 1),
        ("malformed", 1),
        ("too-large", 1),
        ("untrusted", 1),
    ] {
        let line = format!(
            "pier_proxy_protocol_refused_total{{listener=\"lb\",reason=\"{reason}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // A correct header from the balancer's address still gets through.
    let mut client = Client::connect(&served.addr, "127.0.0.1");
    client
        .writer
        .write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4000 80\r\nwhoami\n")
        .expect("send");
    assert!(client.line().is_some_and(|l| l.starts_with("welcome ")));
    let whoami = client.line().expect("whoami");
    assert!(whoami.contains(" 10.1.2.3:4000 lb"), "{whoami}");
    // The per-address limit (one) counts the header's address, not the balancer's: another
    // connection for 10.1.2.3 is refused, one for 10.1.2.4 is welcome — both from 127.0.0.1.
    let mut same = Client::connect(&served.addr, "127.0.0.1");
    same.writer
        .write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 4001 80\r\n")
        .expect("send");
    assert_eq!(
        same.line(),
        None,
        "a second connection for 10.1.2.3 was let in"
    );
    let mut other = Client::connect(&served.addr, "127.0.0.1");
    other
        .writer
        .write_all(b"PROXY TCP4 10.1.2.4 127.0.0.1 4000 80\r\n")
        .expect("send");
    assert!(other.line().is_some_and(|l| l.starts_with("welcome ")));
    let metrics = http_get(&served.admin_addr(), "/metrics");
    assert!(
        metrics.contains(
            "pier_connections_refused_total{listener=\"lb\",reason=\"max_connections_per_address\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn a_slow_header_times_out_and_tls_follows_the_header() {
    let (certs, _) = crate::support::served::certificates("proxy-tls-certs", &[]);
    let pem = |name: &str| certs.join(name).to_str().expect("utf-8").to_string();
    let testkit = guest_file("pier_testkit.wasm");
    let served = Served::start(&[
        testkit.to_str().expect("utf-8"),
        "--framing",
        "lines",
        "--tls-cert",
        &pem("server.pem"),
        "--tls-key",
        &pem("server-key.pem"),
        "--handshake-timeout",
        "500ms",
        "--proxy-protocol",
        "v2",
        "--proxy-from",
        "127.0.0.1",
    ]);
    // Half a header, then nothing: closed once the handshake timeout passes.
    let mut slow = Client::connect(&served.addr, "127.0.0.1");
    slow.writer.write_all(b"\r\n\r\n\0\r\n").expect("send");
    assert_eq!(slow.line(), None);
    assert!(served.wait_for_log("PROXY header refused: no complete PROXY header within"));
    // Through HAProxy (TCP mode, the TLS passes through): header first, then the handshake.
    let (_haproxy, v2) = haproxy(std::slice::from_ref(&served.addr), "send-proxy-v2");
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         raw = socket.create_connection(('127.0.0.1', {port}), timeout=30, source_address=('127.0.0.8', 0))\n\
         s = ctx.wrap_socket(raw, server_hostname='localhost')\n\
         f = s.makefile('rwb')\n\
         assert f.readline().startswith(b'welcome ')\n\
         f.write(b'whoami\\n'); f.flush()\n\
         print(f.readline().decode().strip(), s.getsockname()[1])\n",
        ca = pem("ca.pem"),
        port = v2.rsplit(':').next().unwrap_or_default(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (whoami, port) = text.trim().rsplit_once(' ').expect("whoami and port");
    assert!(whoami.contains(&format!(" 127.0.0.8:{port} ")), "{text}");
}
