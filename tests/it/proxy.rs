//! The PROXY protocol behind a real HAProxy (Debian's `haproxy`, started by the test on free
//! ports, `send-proxy-v2` and `send-proxy`) in front of two pier processes: the plugin sees the
//! client's address, per-address limits count it, and headers that are missing, forged by an
//! untrusted host or garbage are refused and counted.
//!
//! Clients bind distinct loopback source addresses (127.0.0.2, .3, ...) so "the client's
//! address" differs from HAProxy's own (127.0.0.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// Starts HAProxy with a `send-proxy-v2` frontend and a `send-proxy` one, each balancing over
/// `servers` round robin; returns it and the two frontends' addresses.
fn haproxy(test: &str, servers: &[String]) -> (Haproxy, String, String) {
    let v2 = format!("127.0.0.1:{}", ports::reserved_port());
    let v1 = format!("127.0.0.1:{}", ports::reserved_port());
    // Bound with the others, it answers readiness probes itself: a probe through `v1` or `v2`
    // would reach pier as a client and leave again, which plugins see.
    let probe = format!("127.0.0.1:{}", ports::reserved_port());
    let backend = |option: &str| {
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  server s{i} {s} {option}\n"))
            .collect::<String>()
    };
    let config = format!(
        "global\n  log stderr format raw local0 err\n\
         defaults\n  mode tcp\n  balance roundrobin\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend probe\n  bind {probe}\n  tcp-request connection reject\n\
         frontend v2\n  bind {v2}\n  default_backend pier_v2\n\
         frontend v1\n  bind {v1}\n  default_backend pier_v1\n\
         backend pier_v2\n{}\
         backend pier_v1\n{}",
        backend("send-proxy-v2"),
        backend("send-proxy"),
    );
    let path = scratch_dir(test).join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("haproxy (Debian package `haproxy`, installed by .ci/run) must be installed");
    let proxy = Haproxy(child);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(&probe).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy never listened on {probe}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (proxy, v2, v1)
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
    let (_haproxy, v2, v1) = haproxy("proxy-haproxy", &[first.addr.clone(), second.addr.clone()]);
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
    let (_haproxy, v2, _) = haproxy("proxy-tls-haproxy", std::slice::from_ref(&served.addr));
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
