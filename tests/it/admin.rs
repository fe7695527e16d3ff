//! The admin endpoint of the real binary (`--admin`, `[admin] address`), read with curl:
//! `/metrics` moving with traffic and passing `promtool check metrics`, `/healthz`,
//! `/plugins`, `/connections` listing a TLS client's certificate subject, and `POST /reload`
//! swapping a plugin under an open connection.

use crate::support::served;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use served::{LineClient, Served, certificates, eventually, tmp};

/// `curl -sS [-X METHOD] -w '\n%{http_code}' URL`: the body and the status code.
fn curl(method: &str, url: &str) -> (String, u16) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 reply");
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (body.to_string(), code.trim().parse().expect("status code"))
}

fn get(admin: &str, path: &str) -> String {
    let (body, code) = curl("GET", &format!("http://{admin}{path}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

fn get_json(admin: &str, path: &str) -> serde_json::Value {
    let body = get(admin, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// The value of the sample whose line starts with `series` (name and labels exactly as
/// exposed), or 0 if the series is not there yet.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Runs `promtool check metrics` on an exposition; panics with its complaints if it fails.
fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by .ci/run) must be installed");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_move_with_traffic_and_pass_promtool() {
    let served = Served::start(&[
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "lines",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = served.admin_addr();
    assert_eq!(get(&admin, "/healthz").trim(), "ok");

    let before = get(&admin, "/metrics");
    promtool_check(&before);
    let frames = r#"pier_frames_received_total{listener="default",plugin="echo","#;
    let frames_before = before.lines().filter(|l| l.starts_with(frames)).count();
    assert_eq!(frames_before, 1, "one version serves:\n{before}");

    let mut client = LineClient::connect(&served.addr);
    for i in 0..25 {
        assert_eq!(
            client.ask(&format!("hello {i}")),
            format!("Echo: hello {i}")
        );
    }
    let series = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(r#"listener="default""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eventually("25 frames counted", || {
        series(&get(&admin, "/metrics"), "pier_frames_sent_total{") >= 25.0
    });
    let after = get(&admin, "/metrics");
    promtool_check(&after);
    assert_eq!(series(&after, "pier_frames_received_total{"), 25.0);
    assert_eq!(series(&after, "pier_frames_sent_total{"), 25.0);
    // "hello N\n" in, "Echo: hello N\n" out, framing included.
    let bytes: f64 = (0..25).map(|i| format!("hello {i}\n").len() as f64).sum();
    assert_eq!(series(&after, "pier_bytes_received_total{"), bytes);
    assert_eq!(
        series(&after, "pier_bytes_sent_total{"),
        bytes + 25.0 * "Echo: ".len() as f64
    );
    assert_eq!(
        sample(&after, r#"pier_connections_open{listener="default"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"pier_connections_accepted_total{listener="default"}"#
        ),
        1.0
    );
    // on-open plus one call per frame (a lines client waiting for each reply sends one frame
    // per read), each timed.
    assert!(series(&after, "pier_guest_call_duration_seconds_count{") >= 26.0);
    assert!(series(&after, "pier_plugin_instances{") >= 1.0);
    assert_eq!(series(&after, "pier_plugin_faults_total{"), 0.0);

    drop(client);
    eventually("the connection gone from the gauge", || {
        sample(
            &get(&admin, "/metrics"),
            r#"pier_connections_open{listener="default"}"#,
        ) == 0.0
    });

    let (body, code) = curl("GET", &format!("http://{admin}/no-such-page"));
    assert_eq!(code, 404, "{body}");
}

/// A Python `ssl` client with the generated client certificate that sends one line, prints
/// the reply and stays connected until its stdin closes.
fn python_tls_client(port: u16, certs: &Path) -> std::process::Child {
    let script = format!(
        "import ssl, socket, sys\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         ctx.load_cert_chain('{cert}', '{key}')\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='127.0.0.1')\n\
         s.sendall(b'identify me')\n\
         print('reply:' + s.recv(1024).decode(), flush=True)\n\
         sys.stdin.read()\n",
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client-key.pem").display(),
    );
    Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3")
}

#[test]
fn connections_show_the_tls_client_and_plugins_the_version() {
    let (certs, _) = certificates("admin-tls", &[]);
    let path = |f: &str| certs.join(f).display().to_string();
    let served = Served::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server-key.pem"),
        "--client-ca",
        &path("ca.pem"),
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = served.admin_addr();

    let mut client = python_tls_client(served.port(), &certs);
    let mut line = String::new();
    BufReader::new(client.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("python output");
    assert_eq!(line.trim(), "reply:Echo: identify me");

    let connections = get_json(&admin, "/connections");
    let list = connections.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{connections:#}");
    let entry = &list[0];
    assert_eq!(entry["listener"], "default");
    assert!(entry["id"].as_u64().is_some_and(|id| id > 0), "{entry:#}");
    assert!(
        entry["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{entry:#}"
    );
    let subject = entry["tls"]["subject"].as_str().expect("a TLS subject");
    assert!(subject.contains("CN=pier test client"), "{entry:#}");
    assert_eq!(
        entry["tls"]["server_name"],
        serde_json::Value::Null,
        "an IP has no SNI"
    );
    assert_eq!(entry["tls"]["fingerprint"].as_str().map(str::len), Some(64));
    assert_eq!(entry["frames_in"], 1);
    assert_eq!(entry["bytes_in"], "identify me".len());
    assert!(entry["age_seconds"].as_f64().is_some());

    let plugins = get_json(&admin, "/plugins");
    let list = plugins.as_array().expect("a JSON array");
    assert_eq!(list.len(), 1, "{plugins:#}");
    let entry = &list[0];
    assert_eq!(entry["listener"], "default");
    assert_eq!(entry["plugin"], "echo");
    assert!(
        entry["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{entry:#}"
    );
    assert_eq!(entry["generation"], 1);
    assert_eq!(entry["connections"], 1);
    assert!(
        entry["instances"].as_i64().is_some_and(|n| n >= 1),
        "{entry:#}"
    );
    assert_eq!(entry["faults"]["trap"], 0);
    assert!(
        entry["loaded_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // A plain-text client is refused by the handshake; the failure is counted by reason.
    let mut plain = TcpStream::connect(&served.addr).expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("send");
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    eventually("the refused handshake counted", || {
        sample(
            &get(&admin, "/metrics"),
            r#"pier_tls_handshake_failures_total{listener="default",reason="not-tls"}"#,
        ) == 1.0
    });

    drop(client.stdin.take());
    let _ = client.wait();
}

const V1: &str = "pier_stateful.wasm";
const V2: &str = "pier_stateful_v2.wasm";

/// A test plugin's component file, as the build wrote it.
fn guest(name: &str) -> PathBuf {
    pier::builtin::guest_path(name)
}

#[test]
fn post_reload_swaps_the_plugin_under_an_open_connection() {
    let dir = tmp().join("admin-reload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let plugin = dir.join("plugin.wasm");
    std::fs::copy(guest(V1), &plugin).expect("install v1");
    let config = dir.join("pier.toml");
    let toml = r#"
[server]
watch = false

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "live"
address = "127.0.0.1:0"
plugin = "plugin.wasm"
framing = "lines"
"#;
    std::fs::write(&config, toml).expect("write pier.toml");
    let served = Served::start(&["--config", config.to_str().expect("utf-8 path")]);
    let admin = served.admin_addr();
    let version_of = || get_json(&admin, "/plugins")[0]["version"].clone();
    let v1 = version_of();

    let mut client = LineClient::connect(&served.addr_of("live"));
    let first = client.ask("one");
    assert!(first.starts_with("v1"), "{first}");

    // Nothing changed yet: the reload succeeds and swaps nothing.
    let (body, code) = curl("POST", &format!("http://{admin}/reload"));
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["swapped"], serde_json::json!([]), "{report:#}");

    std::fs::copy(guest(V2), &plugin).expect("install v2");
    let (body, code) = curl("POST", &format!("http://{admin}/reload"));
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["swapped"], serde_json::json!(["live"]), "{report:#}");

    let second = client.ask("two");
    assert!(
        second.starts_with("v2"),
        "same connection, new version: {second}"
    );
    assert_ne!(version_of(), v1);
    assert_eq!(get_json(&admin, "/plugins")[0]["generation"], 2);
    let metrics = get(&admin, "/metrics");
    promtool_check(&metrics);
    assert_eq!(
        sample(
            &metrics,
            r#"pier_plugin_reloads_total{listener="live",result="swapped"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"pier_config_reloads_total{result="applied"}"#),
        2.0
    );
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pier_plugin_info{"))
        .collect();
    assert_eq!(info.len(), 1, "only the serving version: {info:?}");

    // A broken config is refused with the reason, and the plugin keeps serving.
    std::fs::write(&config, format!("{toml}\nbogus = 1\n")).expect("break pier.toml");
    let (body, code) = curl("POST", &format!("http://{admin}/reload"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let third = client.ask("three");
    assert!(third.starts_with("v2"), "{third}");
    assert_eq!(
        sample(
            &get(&admin, "/metrics"),
            r#"pier_config_reloads_total{result="refused"}"#
        ),
        1.0
    );
}
