//! Outbound pools and the proxy plugin, end to end with the real binary: a line server in this
//! test counts the connections the pool opens, and clients talk to `pier serve --config` with
//! the built-in `proxy` plugin in front of it. Covers `max_size` under concurrency, connection
//! reuse, idle expiry, an upstream restarted mid-test, failover, a TLS upstream (pier itself)
//! requiring a client certificate, `not-granted`, the config check, `pier send --repeat` and
//! the upstream metrics.

use crate::support::ports;
use crate::support::served;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use served::{LineClient, Served, certificates, eventually, pier, tmp};

/// A lines server standing in for an upstream: answers `up PORT: LINE`, counts connections.
struct LineServer {
    port: u16,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Counts {
    /// Connections open now.
    open: AtomicUsize,
    /// Most open at once.
    max_open: AtomicUsize,
    /// Connections accepted in all.
    accepted: AtomicUsize,
    /// Every connection, so `stop` can close them like a server that exits.
    streams: Mutex<Vec<TcpStream>>,
}

impl LineServer {
    /// Listens on `port` (0: any free port).
    fn start(port: u16) -> LineServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the line server");
        Self::serve(listener, Arc::default())
    }

    /// Listens on `port` again after a [`LineServer::stop`], keeping the counts.
    fn restart(port: u16, counts: Arc<Counts>) -> LineServer {
        Self::serve(ports::bind_again(port), counts)
    }

    fn serve(listener: TcpListener, counts: Arc<Counts>) -> LineServer {
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    counts.accepted.fetch_add(1, Ordering::SeqCst);
                    let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.max_open.fetch_max(open, Ordering::SeqCst);
                    if let Ok(clone) = stream.try_clone() {
                        counts.streams.lock().unwrap().push(clone);
                    }
                    let counts = counts.clone();
                    std::thread::spawn(move || {
                        let mut writer = stream.try_clone().expect("clone");
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { break };
                            if writer
                                .write_all(format!("up {port}: {line}\n").as_bytes())
                                .is_err()
                            {
                                break;
                            }
                        }
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        LineServer {
            port,
            counts,
            stop,
            accept: Some(accept),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops listening and closes every connection, as a server that exits would.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for stream in self.counts.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    fn max_open(&self) -> usize {
        self.counts.max_open.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Writes `toml` as pier.toml in a fresh folder and serves it; waits for `listeners` lines.
fn serve(name: &str, toml: &str, listeners: usize) -> (Served, PathBuf) {
    let dir = tmp().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let config = dir.join("pier.toml");
    std::fs::write(&config, toml).expect("write pier.toml");
    let served = Served::start_listeners(
        &["--config", config.to_str().expect("utf-8 path")],
        listeners,
    );
    (served, dir)
}

fn proxy_config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
watch = false

[[upstream]]
name = "backend"
{upstream}

[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["backend"]
{extra}
"#
    )
}

#[test]
fn pooled_connections_stay_within_max_size_and_are_reused() {
    let backend = LineServer::start(0);
    let toml = proxy_config(
        &format!(
            "addresses = [\"{}\"]\nmax_size = 3\nrequest_timeout = \"20s\"",
            backend.addr()
        ),
        "",
    );
    let (served, _dir) = serve("upstream-max-size", &toml, 1);
    let front = served.addr_of("front");
    let clients: Vec<_> = (0..12)
        .map(|c| {
            let front = front.clone();
            std::thread::spawn(move || {
                let mut client = LineClient::connect(&front);
                for i in 0..25 {
                    let reply = client.ask(&format!("client {c} frame {i}"));
                    assert!(
                        reply.ends_with(&format!(": client {c} frame {i}")),
                        "wrong reply: {reply}"
                    );
                    assert!(reply.starts_with("up "), "not from the upstream: {reply}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client thread");
    }
    assert!(
        backend.max_open() <= 3,
        "the upstream saw {} connections at once (max_size 3)",
        backend.max_open()
    );
    assert!(
        backend.accepted() <= 3,
        "connections are reused: {} opened for 300 requests",
        backend.accepted()
    );
    assert!(backend.accepted() >= 1);
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let backend = LineServer::start(0);
    let toml = proxy_config(
        &format!(
            "addresses = [\"{}\"]\nidle_timeout = \"300ms\"",
            backend.addr()
        ),
        "",
    );
    let (served, _dir) = serve("upstream-idle", &toml, 1);
    let mut client = LineClient::connect(&served.addr_of("front"));
    assert!(client.ask("first").ends_with(": first"));
    assert_eq!(backend.open(), 1);
    eventually("the idle upstream connection closed by pier", || {
        backend.open() == 0
    });
    // The next request opens a fresh connection.
    assert!(client.ask("second").ends_with(": second"));
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn a_restarted_upstream_is_survived_without_failed_requests() {
    // Restarted on the same port, so not one from the ephemeral range (see `ports`).
    let mut backend = LineServer::start(ports::reserved_port());
    let port = backend.port;
    let toml = proxy_config(
        &format!("addresses = [\"{}\"]\nmax_size = 2", backend.addr()),
        "",
    );
    let (served, _dir) = serve("upstream-restart", &toml, 1);
    let mut clients: Vec<LineClient> = (0..2)
        .map(|_| LineClient::connect(&served.addr_of("front")))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert!(client.ask(&format!("before {i}")).starts_with("up "));
    }
    // The upstream restarts: every pooled connection is closed under the pool.
    backend.stop();
    let counts = backend.counts.clone();
    drop(backend);
    let restarted = LineServer::restart(port, counts);
    eventually("the old connections closed", || restarted.open() == 0);
    for round in 0..10 {
        for (i, client) in clients.iter_mut().enumerate() {
            let reply = client.ask(&format!("after {round} {i}"));
            assert_eq!(
                reply,
                format!("up {port}: after {round} {i}"),
                "a request failed after the upstream came back"
            );
        }
    }
}

#[test]
fn requests_fail_over_to_the_address_that_is_up() {
    let backend = LineServer::start(0);
    let other = LineServer::start(0);
    let down = dead_port();
    let toml = proxy_config(
        &format!(
            "addresses = [\"127.0.0.1:{down}\", \"{}\", \"{}\"]\nconnect_timeout = \"1s\"",
            backend.addr(),
            other.addr()
        ),
        "",
    );
    let (served, _dir) = serve("upstream-failover", &toml, 1);
    let mut client = LineClient::connect(&served.addr_of("front"));
    let mut seen = std::collections::HashSet::new();
    for i in 0..30 {
        let reply = client.ask(&format!("frame {i}"));
        assert!(reply.ends_with(&format!(": frame {i}")), "failed: {reply}");
        seen.insert(reply.split(':').next().unwrap_or_default().to_string());
    }
    // Round robin over the two addresses that are up.
    assert_eq!(seen.len(), 2, "balanced over both live addresses: {seen:?}");
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn a_tls_upstream_requiring_a_client_certificate() {
    let (certs, _) = certificates("upstream-tls", &[]);
    // The upstream: pier's echo over TLS, refusing clients without a certificate from the CA.
    let upstream = Served::start(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "lines",
        "--tls-cert",
        &path(&certs, "server.pem"),
        "--tls-key",
        &path(&certs, "server-key.pem"),
        "--client-ca",
        &path(&certs, "ca.pem"),
    ]);
    let toml = format!(
        r#"
[server]
watch = false

[[upstream]]
name = "secure"
addresses = ["{addr}"]
[upstream.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[upstream]]
name = "nocert"
addresses = ["{addr}"]
[upstream.tls]
ca = "{ca}"

[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["secure"]

[[listener]]
name = "anonymous"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["nocert"]
"#,
        addr = upstream.addr,
        ca = path(&certs, "ca.pem"),
        cert = path(&certs, "client.pem"),
        key = path(&certs, "client-key.pem"),
    );
    let (served, _dir) = serve("upstream-tls-proxy", &toml, 2);
    let mut client = LineClient::connect(&served.addr_of("front"));
    assert_eq!(client.ask("over mutual TLS"), "Echo: over mutual TLS");
    assert_eq!(client.ask("again"), "Echo: again");
    let mut anonymous = LineClient::connect(&served.addr_of("anonymous"));
    assert_eq!(
        anonymous.ask("no certificate"),
        "error: upstream nocert: unavailable"
    );
    assert!(
        upstream.wait_for_log("TLS handshake failed"),
        "the upstream refused the client without a certificate"
    );
}

#[test]
fn an_upstream_not_granted_does_not_exist_for_the_plugin() {
    let granted = LineServer::start(0);
    let hidden = LineServer::start(0);
    let toml = format!(
        r#"
[server]
watch = false

[[upstream]]
name = "granted"
addresses = ["{}"]

[[upstream]]
name = "hidden"
addresses = ["{}"]

[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["granted"]
[listener.plugin_config]
upstream = "hidden"
"#,
        granted.addr(),
        hidden.addr()
    );
    let (served, _dir) = serve("upstream-not-granted", &toml, 1);
    let mut client = LineClient::connect(&served.addr_of("front"));
    assert_eq!(client.ask("hello"), "error: upstream hidden: not-granted");
    assert_eq!(
        hidden.accepted(),
        0,
        "the hidden upstream was never contacted"
    );
}

#[test]
fn a_plugin_needing_upstreams_is_refused_where_none_are_granted() {
    let dir = tmp().join("upstream-refused");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let config = dir.join("pier.toml");
    std::fs::write(
        &config,
        r#"
[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "proxy"
"#,
    )
    .expect("write pier.toml");
    let out = pier()
        .args(["serve", "--config", config.to_str().expect("utf-8 path")])
        .output()
        .expect("pier serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pier:plugin/upstream") && stderr.contains("grants no upstreams"),
        "{stderr}"
    );
}

#[test]
fn pier_send_repeat_reuses_pooled_connections() {
    let backend = LineServer::start(0);
    let out = pier()
        .args([
            "send",
            &backend.addr(),
            "ping",
            "--framing",
            "lines",
            "--repeat",
            "200",
            "--concurrency",
            "4",
        ])
        .output()
        .expect("pier send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("up {}: ping", backend.port).as_str())
    );
    let summary = lines.next().unwrap_or_default();
    assert!(summary.contains("200 requests"), "{summary}");
    assert!(summary.contains("200 ok, 0 failed"), "{summary}");
    assert!(
        backend.accepted() <= 4,
        "{} connections for 200 requests",
        backend.accepted()
    );
    assert!(backend.max_open() <= 4);

    // Raw framing has no reply boundary: each request gets a fresh connection.
    let raw = LineServer::start(0);
    let out = pier()
        .args([
            "send",
            &raw.addr(),
            "ping\n",
            "--repeat",
            "5",
            "--concurrency",
            "1",
        ])
        .output()
        .expect("pier send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 ok, 0 failed"), "{stdout}");
    assert_eq!(raw.accepted(), 5, "raw connections are not reused");
}

#[test]
fn upstream_metrics_show_the_pool() {
    let backend = LineServer::start(0);
    let toml = proxy_config(
        &format!("addresses = [\"{}\"]\nmax_size = 2", backend.addr()),
        "",
    )
    .replace(
        "[server]\n",
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[server]\n",
    );
    let (served, _dir) = serve("upstream-metrics", &toml, 1);
    let mut client = LineClient::connect(&served.addr_of("front"));
    for i in 0..5 {
        assert!(client.ask(&format!("m{i}")).ends_with(&format!(": m{i}")));
    }
    let admin = served.admin_addr();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://{admin}/metrics"),
        ])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&out.stdout);
    for line in [
        r#"pier_upstream_requests_total{result="ok",upstream="backend"} 5"#,
        r#"pier_upstream_connections_opened_total{upstream="backend"} 1"#,
        r#"pier_upstream_connections{state="open",upstream="backend"} 1"#,
        r#"pier_upstream_connections{state="idle",upstream="backend"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
}

#[test]
fn a_silent_upstream_times_out_cleanly_and_oversized_frames_are_refused() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("address");
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in silent.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let echo = LineServer::start(0);
    let toml = format!(
        r#"
[server]
watch = false

[[upstream]]
name = "silent"
addresses = ["{silent_addr}"]
max_size = 1
request_timeout = "300ms"

[[upstream]]
name = "small"
addresses = ["{}"]
max_frame = 24

[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["silent"]

[[listener]]
name = "small"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "lines"
upstreams = ["small"]

[[listener]]
name = "binary"
address = "127.0.0.1:0"
plugin = "proxy"
framing = "length-prefixed"
upstreams = ["small"]
"#,
        echo.addr()
    );
    let (served, _dir) = serve("upstream-timeout", &toml, 3);
    // Two clients at once on a pool of one: the second waits for the connection, and both
    // end with a timeout instead of hanging.
    let front = served.addr_of("front");
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let front = front.clone();
            std::thread::spawn(move || LineClient::connect(&front).ask(&format!("hello {i}")))
        })
        .collect();
    for client in waiting {
        assert_eq!(
            client.join().expect("client"),
            "error: upstream silent: timeout"
        );
    }
    // The log says where the request went, not only which upstream it was.
    let line = served.log_line("request failed: timed out");
    assert!(
        line.contains("upstream=silent") && line.contains(&format!("addresses={silent_addr}")),
        "{line}"
    );
    let mut small = LineClient::connect(&served.addr_of("small"));
    assert!(small.ask("short").ends_with(": short"));
    assert_eq!(
        small.ask("a frame longer than twenty-four bytes"),
        "error: upstream small: frame-too-large"
    );
    assert!(small.ask("short again").ends_with(": short again"));

    // A frame with a newline would reach a lines upstream as two requests: refused.
    let mut binary = TcpStream::connect(served.addr_of("binary")).expect("connect");
    binary
        .set_read_timeout(Some(served::WAIT))
        .expect("timeout");
    let ask = |stream: &mut TcpStream, frame: &[u8]| -> String {
        stream
            .write_all(&(frame.len() as u32).to_be_bytes())
            .expect("send");
        stream.write_all(frame).expect("send");
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).expect("reply length");
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).expect("reply");
        String::from_utf8(reply).expect("utf-8")
    };
    assert_eq!(
        ask(&mut binary, b"two\nlines"),
        "error: upstream small: invalid-frame"
    );
    assert!(ask(&mut binary, b"one line").ends_with(": one line"));
}

#[test]
fn pier_serve_proxy_with_upstream_on_the_command_line() {
    let backend = LineServer::start(0);
    let down = dead_port();
    let served = Served::start(&[
        "proxy",
        "--upstream",
        &format!("127.0.0.1:{down},{}", backend.addr()),
    ]);
    assert!(
        served.log().contains("plugin proxy, framing lines"),
        "{}",
        served.log()
    );
    let mut client = LineClient::connect(&served.addr);
    for i in 0..5 {
        assert_eq!(
            client.ask(&format!("line {i}")),
            format!("up {}: line {i}", backend.port)
        );
    }
}
