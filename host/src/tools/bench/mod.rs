//! `pier bench` and `pier baseline`: measuring pier against a native server in the same run.
//!
//! - [`load`]: the load generator (connections × frames in flight, reply checks, HDR latency).
//! - [`baseline`]: the native tokio echo server every figure is compared with.
//! - [`procstat`]: server CPU time and resident memory from `/proc`.
//!
//! `pier bench ADDR` loads any server. `pier bench --compare` starts `pier serve PLUGIN` and
//! `pier baseline` as child processes with the same framing, then alternates measured rounds
//! between them (native, pier, native, pier, ...) so both see the same machine conditions, and
//! reports each one's round trips/s, latency percentiles and server CPU per round trip, plus
//! pier's ratio to native.

pub mod baseline;
pub mod load;
pub mod procstat;

use std::io::{BufRead, BufReader, IsTerminal};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::net::framing::Framing;
use load::{LoadReport, LoadSpec, Progress};

/// `pier bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server to load. Omit it with `--compare`.
    #[arg(required_unless_present = "compare")]
    pub addr: Option<String>,

    /// Start `pier serve PLUGIN` and the native baseline and compare them, alternating rounds.
    #[arg(long)]
    pub compare: bool,

    /// With `--compare`: the plugin pier serves (a built-in name or a .wasm path).
    #[arg(long, default_value = "echo")]
    pub plugin: String,

    /// With `--compare`: measured rounds per server.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// With `--compare`: worker threads of both servers (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// How long each measured run lasts, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Duration,

    /// Stop after this many round trips instead of after `--duration`.
    #[arg(long)]
    pub requests: Option<u64>,

    /// Unmeasured warm-up before each server's first round.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Payload bytes per frame.
    #[arg(long, default_value_t = 16)]
    pub size: usize,

    /// Frames in flight per connection (pipelining).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,

    /// Framing.
    #[arg(long, value_enum, default_value = "raw")]
    pub framing: Framing,

    /// Total round trips per second to aim for (paced); default flat out.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Each reply must be this prefix followed by the payload.
    #[arg(long, default_value = "Echo: ")]
    pub expect_prefix: String,

    /// A server process id whose CPU time to report per round trip (single-server mode).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Instead of load: open this many idle connections (from 127.0.0.1–127.0.0.8 in turn) to
    /// each server and report its resident memory per connection. Needs `--compare` or
    /// `--server-pid`.
    #[arg(long)]
    pub idle: Option<usize>,

    /// Every round trip on a new connection (connect, TLS handshake with `--tls`, one frame,
    /// close): measures connection set-up, e.g. TLS handshakes per second.
    #[arg(long)]
    pub reconnect: bool,

    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,

    /// TLS options. With `--compare --tls`, test certificates are generated and both servers
    /// serve TLS with them.
    #[command(flatten)]
    pub tls: crate::net::tls::client::ClientTlsArgs,
}

/// `pier baseline`.
#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// Address to listen on (port 0 picks one; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,

    /// Framing.
    #[arg(long, value_enum, default_value = "raw")]
    pub framing: Framing,

    /// Largest frame accepted.
    #[arg(long, default_value = "1MiB", value_parser = crate::deploy::config::parse_size)]
    pub max_frame: usize,

    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Serve TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The certificate's key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Runs `pier baseline`.
pub fn baseline_main(args: BaselineArgs) -> Result<()> {
    crate::sys::raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        builder.worker_threads(w.max(1));
    }
    let rt = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "pier: baseline listening on {} (native echo, framing {})",
            listener.local_addr()?,
            args.framing
        );
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let listener = crate::net::tls::TlsListener::load(crate::net::tls::TlsOptions {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                    client_cert_optional: false,
                    alpn: Vec::new(),
                    handshake_timeout: Duration::from_secs(10),
                    sni: Vec::new(),
                })?;
                Some(listener.acceptor())
            }
            _ => None,
        };
        baseline::serve(listener, args.framing, args.max_frame, tls).await
    })
}

/// One server's figures over the measured rounds.
struct Measured {
    name: &'static str,
    rates: Vec<f64>,
    cpu_seconds: f64,
    round_trips: u64,
    mismatches: u64,
    errors: u64,
    error_kinds: std::collections::BTreeMap<&'static str, u64>,
    first_error: Option<String>,
    first_unexpected: Option<bytes::Bytes>,
    expected: Option<bytes::Bytes>,
    latency: hdrhistogram::Histogram<u64>,
}

impl Measured {
    fn new(name: &'static str) -> Self {
        Measured {
            name,
            rates: Vec::new(),
            cpu_seconds: 0.0,
            round_trips: 0,
            mismatches: 0,
            errors: 0,
            error_kinds: Default::default(),
            first_error: None,
            first_unexpected: None,
            expected: None,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid bounds"),
        }
    }

    fn add(&mut self, report: &LoadReport, cpu: Option<f64>) {
        self.rates.push(report.rate());
        self.cpu_seconds += cpu.unwrap_or(0.0);
        self.round_trips += report.round_trips;
        self.mismatches += report.mismatches;
        self.errors += report.errors;
        for (kind, n) in &report.error_kinds {
            *self.error_kinds.entry(kind).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&report.first_error);
        }
        if self.first_unexpected.is_none() {
            self.first_unexpected.clone_from(&report.first_unexpected);
        }
        self.expected.get_or_insert_with(|| report.expected.clone());
        let _ = self.latency.add(&report.latency);
    }

    fn median_rate(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    }

    fn cpu_us_per_rt(&self) -> Option<f64> {
        (self.cpu_seconds > 0.0 && self.round_trips > 0)
            .then(|| self.cpu_seconds * 1e6 / self.round_trips as f64)
    }

    fn json(&self) -> Value {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "server": self.name,
            "round_trips_per_s": self.median_rate(),
            "rounds": self.rates,
            "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999),
            "max_us": self.latency.max() as f64 / 1000.0,
            "cpu_us_per_round_trip": self.cpu_us_per_rt(),
            "round_trips": self.round_trips,
            "mismatches": self.mismatches,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "first_error": self.first_error,
            "first_unexpected_reply": self.first_unexpected.as_deref().map(shown),
            "expected_reply": self.expected.as_deref().map(shown),
        })
    }
}

/// A reply as printable text: bytes outside printable ASCII escaped, long ones cut.
fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        format!("{text}... ({} bytes)", bytes.len())
    } else {
        text
    }
}

/// Why a run is a failure: every result's errors by kind and its first unexpected reply, one
/// sentence; `None` when every round trip was answered as expected.
fn failures(output: &Value) -> Option<String> {
    let mut problems = Vec::new();
    for r in output["results"].as_array().into_iter().flatten() {
        let errors = r["errors"].as_u64().unwrap_or(0);
        let mismatches = r["mismatches"].as_u64().unwrap_or(0);
        if errors == 0 && mismatches == 0 {
            continue;
        }
        let mut parts = Vec::new();
        if errors > 0 {
            let kinds: Vec<String> = r["error_kinds"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            parts.push(format!(
                "{errors} connection errors ({}; first: {})",
                kinds.join(", "),
                r["first_error"].as_str().unwrap_or("?")
            ));
        }
        if mismatches > 0 {
            parts.push(format!(
                "{mismatches} unexpected replies (first: \"{}\", expected \"{}\")",
                r["first_unexpected_reply"].as_str().unwrap_or("?"),
                r["expected_reply"].as_str().unwrap_or("?")
            ));
        }
        problems.push(format!(
            "{}: {}",
            r["server"].as_str().unwrap_or("server"),
            parts.join("; ")
        ));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Runs `pier bench`.
pub fn bench_main(args: BenchArgs) -> Result<()> {
    crate::sys::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let output = if let Some(count) = args.idle {
        rt.block_on(idle(&args, count))?
    } else if args.compare {
        rt.block_on(compare(&args))?
    } else {
        let addr = args
            .addr
            .clone()
            .ok_or_else(|| anyhow!("ADDR is required"))?;
        rt.block_on(single(&args, &addr))?
    };
    if args.json {
        println!("{output}");
    } else {
        print_human(&args, &output);
    }
    // Figures from a run with failed round trips are not a measurement of the server: say why
    // and exit non-zero, so scripts cannot take them for one.
    if let Some(why) = failures(&output) {
        bail!("bench: {why}");
    }
    Ok(())
}

fn spec(args: &BenchArgs, addr: &str, duration: Option<Duration>) -> Result<LoadSpec> {
    // A bad TLS option fails the bench rather than silently measuring plaintext.
    let tls = args.tls.connector(addr)?;
    Ok(LoadSpec {
        tls,
        reconnect: args.reconnect,
        addr: addr.to_string(),
        connections: args.connections.max(1),
        duration: if args.requests.is_some() {
            None
        } else {
            duration
        },
        requests: args.requests,
        size: args.size,
        in_flight: args.in_flight.max(1),
        framing: args.framing,
        rate: args.rate,
        expect_prefix: args.expect_prefix.as_bytes().to_vec(),
    })
}

/// One measured run with a progress bar on a terminal, and the server's CPU time used.
async fn measured_run(spec: &LoadSpec, label: &str, pid: Option<u32>) -> (LoadReport, Option<f64>) {
    let progress = Arc::new(Progress::default());
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_message(format!(
                    "round trips: {}",
                    progress.done.load(Ordering::Relaxed)
                ));
            }
        })
    });
    let cpu_before = pid.and_then(procstat::cpu_seconds);
    let report = load::run(spec, progress).await;
    let cpu_after = pid.and_then(procstat::cpu_seconds);
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    (report, cpu)
}

async fn single(args: &BenchArgs, addr: &str) -> Result<Value> {
    let mut measured = Measured::new("server");
    let (report, cpu) = measured_run(
        &spec(args, addr, Some(args.duration))?,
        addr,
        args.server_pid,
    )
    .await;
    measured.add(&report, cpu);
    Ok(json!({
        "addr": addr,
        "framing": args.framing.name(),
        "connections": args.connections,
        "in_flight": args.in_flight,
        "size": args.size,
        "results": [measured.json()],
    }))
}

/// A server child process, killed on drop.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &[String]) -> Result<ServerProcess> {
    let exe = std::env::current_exe().context("cannot find the pier executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start a server process")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            bail!("server {args:?} exited before listening");
        };
        if let Some(rest) = line
            .strip_prefix("pier: listening on ")
            .or_else(|| line.strip_prefix("pier: baseline listening on "))
        {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProcess { child, addr })
}

async fn compare(args: &BenchArgs) -> Result<Value> {
    let framing = args.framing.name().to_string();
    let mut common = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--framing".into(),
        framing.clone(),
    ];
    if let Some(w) = args.workers {
        common.extend(["--workers".to_string(), w.to_string()]);
    }
    // With --tls both servers serve the same generated certificate and the client trusts its
    // CA, so the two measure the same handshakes and record sizes.
    let certs = match args.tls.tls {
        true => Some(TestCertificates::generate()?),
        false => None,
    };
    let mut args = args.clone();
    if let Some(certs) = &certs {
        common.extend([
            "--tls-cert".to_string(),
            path_arg(&certs.files.server_cert)?,
            "--tls-key".into(),
            path_arg(&certs.files.server_key)?,
        ]);
        if args.tls.ca.is_none() && !args.tls.insecure {
            args.tls.ca = Some(certs.files.ca_cert.clone());
        }
    }
    let args = &args;
    let mut pier_args = vec![
        "--log-level".to_string(),
        "warn".into(),
        "serve".into(),
        args.plugin.clone(),
    ];
    pier_args.extend(common.clone());
    let mut native_args = vec!["baseline".to_string()];
    native_args.extend(common);
    let native = start_server(&native_args)?;
    let pier = start_server(&pier_args)?;

    let mut results = [Measured::new("native"), Measured::new("pier")];
    let servers = [&native, &pier];
    for (server, label) in servers.iter().zip(["native warm-up", "pier warm-up"]) {
        if !args.warmup.is_zero() {
            let mut warm = spec(args, &server.addr, Some(args.warmup))?;
            warm.requests = None;
            measured_run(&warm, label, None).await;
        }
    }
    for round in 0..args.rounds.max(1) {
        // Alternate which goes first so neither always runs on a warmer machine.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let server = servers[i];
            let label = format!("{} round {}", results[i].name, round + 1);
            let (report, cpu) = measured_run(
                &spec(args, &server.addr, Some(args.duration))?,
                &label,
                Some(server.child.id()),
            )
            .await;
            results[i].add(&report, cpu);
        }
    }
    let ratio = results[1].median_rate() / results[0].median_rate().max(1e-9);
    let cpu_ratio = results[1]
        .cpu_us_per_rt()
        .zip(results[0].cpu_us_per_rt())
        .map(|(p, n)| p / n);
    Ok(json!({
        "plugin": args.plugin,
        "framing": framing,
        "connections": args.connections,
        "in_flight": args.in_flight,
        "size": args.size,
        "tls": args.tls.tls,
        "reconnect": args.reconnect,
        "duration_s": args.duration.as_secs_f64(),
        "rounds": args.rounds,
        "results": [results[0].json(), results[1].json()],
        "pier_vs_native": { "round_trips": ratio, "cpu_per_round_trip": cpu_ratio },
    }))
}

/// Certificates from `pier cert generate` in a temporary folder, removed on drop.
struct TestCertificates {
    dir: std::path::PathBuf,
    files: crate::net::tls::certgen::Generated,
}

impl TestCertificates {
    fn generate() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("pier-bench-certs-{}", std::process::id()));
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let files = crate::net::tls::certgen::generate(&dir, &hosts, 1)
            .context("cannot generate test certificates for --tls")?;
        Ok(TestCertificates { dir, files })
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A path as a command-line argument.
fn path_arg(path: &std::path::Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}

/// Opens `count` idle connections to `addr`, spread over source addresses 127.0.0.1–8, and
/// returns the server's resident memory growth per connection.
async fn idle_memory(addr: &str, pid: u32, count: usize) -> Result<Value> {
    let target: std::net::SocketAddr = addr.parse().context("server address")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procstat::resident_bytes(pid).context("cannot read the server's memory")?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let socket = tokio::net::TcpSocket::new_v4()?;
        let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8);
        socket.bind((source, 0).into())?;
        let stream = socket
            .connect(target)
            .await
            .with_context(|| format!("connection {i} of {count} failed"))?;
        held.push(stream);
    }
    // Let the server accept and register every connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procstat::resident_bytes(pid).context("cannot read the server's memory")?;
    // A figure per connection is only true if the server holds them all: one that refused
    // some (a connection limit, an fd limit) has closed them by now.
    let closed = held.iter().filter(|stream| was_closed(stream)).count();
    drop(held);
    if closed > 0 {
        bail!(
            "the server closed {closed} of {count} idle connections (its connection or \
             open-file limit?): no figure per connection"
        );
    }
    let per = after.saturating_sub(before) as f64 / count as f64;
    Ok(json!({
        "connections": count,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_connection": per,
    }))
}

/// Whether the server has closed `stream` (end of stream or an error); bytes it sent, such as
/// a greeting, are read and ignored.
fn was_closed(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

async fn idle(args: &BenchArgs, count: usize) -> Result<Value> {
    crate::sys::raise_fd_limit();
    if let (Some(addr), Some(pid)) = (&args.addr, args.server_pid) {
        return Ok(
            json!({ "idle": [ { "server": "server", "memory": idle_memory(addr, pid, count).await? } ] }),
        );
    }
    if !args.compare {
        bail!("--idle needs --compare, or ADDR with --server-pid");
    }
    let framing = args.framing.name().to_string();
    let listen = [
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--framing".into(),
        framing,
    ];
    let mut results = Vec::new();
    let native_args: Vec<String> = ["baseline".to_string()]
        .into_iter()
        .chain(listen.clone())
        .collect();
    let pier_args: Vec<String> = [
        "--log-level".to_string(),
        "warn".into(),
        "serve".into(),
        args.plugin.clone(),
        // The default limit (10,000) would refuse the rest of a larger count.
        "--max-connections".into(),
        count.max(1).to_string(),
        // Every idle client comes from 127.0.0.1 and stays silent: lift the per-address limit
        // and the idle timeout that protect an Internet-facing port.
        "--max-connections-per-address".into(),
        "0".into(),
        "--idle-timeout".into(),
        "off".into(),
    ]
    .into_iter()
    .chain(listen)
    .collect();
    for (name, server_args) in [("native", native_args), ("pier", pier_args)] {
        let server = start_server(&server_args)?;
        let memory = idle_memory(&server.addr, server.child.id(), count).await?;
        results.push(json!({ "server": name, "memory": memory }));
    }
    Ok(json!({ "idle": results }))
}

fn print_human(args: &BenchArgs, output: &Value) {
    if let Some(idle) = output["idle"].as_array() {
        for r in idle {
            let m = &r["memory"];
            println!(
                "{:<8} {} idle connections: {:.0} bytes resident per connection (RSS {} → {} bytes)",
                r["server"].as_str().unwrap_or("?"),
                m["connections"],
                m["bytes_per_connection"].as_f64().unwrap_or(0.0),
                m["rss_before_bytes"],
                m["rss_after_bytes"],
            );
        }
        return;
    }
    println!(
        "{} connections, {} in flight, {} B frames, framing {}",
        args.connections, args.in_flight, args.size, args.framing
    );
    println!(
        "{:<8} {:>14} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>10} {:>7}",
        "server",
        "round trips/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "CPU µs/rt",
        "mismatch",
        "errors"
    );
    for r in output["results"].as_array().into_iter().flatten() {
        let cpu = r["cpu_us_per_round_trip"]
            .as_f64()
            .map_or("-".to_string(), |c| format!("{c:.2}"));
        println!(
            "{:<8} {:>14.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>12} {:>10} {:>7}",
            r["server"].as_str().unwrap_or("?"),
            r["round_trips_per_s"].as_f64().unwrap_or(0.0),
            r["p50_us"].as_f64().unwrap_or(0.0),
            r["p90_us"].as_f64().unwrap_or(0.0),
            r["p99_us"].as_f64().unwrap_or(0.0),
            r["p999_us"].as_f64().unwrap_or(0.0),
            r["max_us"].as_f64().unwrap_or(0.0),
            cpu,
            r["mismatches"],
            r["errors"],
        );
    }
    if let Some(ratio) = output["pier_vs_native"]["round_trips"].as_f64() {
        let cpu = output["pier_vs_native"]["cpu_per_round_trip"]
            .as_f64()
            .map_or("-".to_string(), |c| format!("{c:.2}×"));
        println!("pier/native: round trips {ratio:.2}×, CPU per round trip {cpu}");
    }
}
