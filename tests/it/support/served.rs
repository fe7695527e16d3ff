//! The `pier` binary as a child process: `pier serve` started with its address read from the
//! `pier: listening on ...` lines it prints, killed when the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const PIER: &str = env!("CARGO_BIN_EXE_pier");
pub use super::WAIT;

/// The tests' scratch folder.
pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `pier` with the test cache folder and no inherited log settings.
pub fn pier() -> Command {
    pier_at(std::path::Path::new(PIER))
}

/// Like [`pier`], running the binary at `binary` (e.g. a copy a test replaces).
pub fn pier_at(binary: &std::path::Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env("PIER_CACHE_DIR", tmp().join("pier-cache"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// A running `pier serve`, killed on drop.
pub struct Served {
    /// The process.
    pub child: Child,
    /// The first listener's address.
    pub addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `pier serve ARGS` and waits for its first `listening on` line.
    pub fn start(args: &[&str]) -> Served {
        Self::start_listeners(args, 1)
    }

    /// Starts `pier serve ARGS` and waits until `count` listeners reported their address.
    pub fn start_listeners(args: &[&str], count: usize) -> Served {
        Self::start_within(args, count, WAIT)
    }

    /// Like [`Served::start_listeners`], waiting up to `wait` (a plugin compiled for the first
    /// time, e.g. one embedding a language runtime, can take longer than `WAIT`).
    /// Without `--listen` or `--config` in ARGS it listens on `127.0.0.1:0`: tests run in
    /// parallel and must not share the default port.
    pub fn start_within(args: &[&str], count: usize, wait: Duration) -> Served {
        Self::start_with_env(args, count, wait, &[])
    }

    /// Like [`Served::start_within`], with extra environment variables (e.g. the addresses a
    /// pier.toml takes from `${NAME:-default}`).
    pub fn start_with_env(
        args: &[&str],
        count: usize,
        wait: Duration,
        env: &[(&str, &str)],
    ) -> Served {
        Self::start_binary(std::path::Path::new(PIER), args, count, wait, env)
    }

    /// Like [`Served::start_with_env`], running the binary at `binary`.
    pub fn start_binary(
        binary: &std::path::Path,
        args: &[&str],
        count: usize,
        wait: Duration,
        env: &[(&str, &str)],
    ) -> Served {
        let free_port: &[&str] = if args.iter().any(|a| *a == "--listen" || *a == "--config") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = pier_at(binary)
            .arg("serve")
            .args(args)
            .args(free_port)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pier serve");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    if line.starts_with("pier: listening on ") {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let mut first = None;
        for _ in 0..count {
            let line = rx.recv_timeout(wait).unwrap_or_else(|_| {
                panic!(
                    "pier did not report its addresses; stderr: {:?}",
                    lines.lock().unwrap()
                )
            });
            assert!(line.contains("(plugin "), "{line}");
            first.get_or_insert(listening_addr(&line));
        }
        Served {
            child,
            addr: first.unwrap_or_default(),
            stderr: lines,
        }
    }

    /// The address of config listener `name`, from the latest `listening on` line naming it;
    /// waits for it to appear (a listener added by a reload reports later).
    pub fn addr_of(&self, name: &str) -> String {
        self.listening_line(&format!("; listener {name})"), true)
    }

    /// The address of the first other door of config listener `name` (`[[listener.door]]`).
    pub fn door_of(&self, name: &str) -> String {
        self.listening_line(&format!("; door of listener {name})"), false)
    }

    /// The address in the latest (or first) `listening on` line ending in `suffix`, waiting for
    /// it up to `WAIT`.
    fn listening_line(&self, suffix: &str, latest: bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let lines = self.stderr.lock().unwrap();
                let matching =
                    |l: &&String| l.starts_with("pier: listening on ") && l.ends_with(suffix);
                let line = if latest {
                    lines.iter().rev().find(matching)
                } else {
                    lines.iter().find(matching)
                };
                line.map(|l| listening_addr(l))
            };
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no listening line ending in {suffix:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a log line contains `text`; false if none did within `WAIT`.
    pub fn wait_for_log(&self, text: &str) -> bool {
        self.wait_for_log_count(text, 1)
    }

    /// Waits until at least `count` log lines contain `text` (e.g. the second `reload done`);
    /// false if fewer did within `WAIT`.
    pub fn wait_for_log_count(&self, text: &str, count: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let seen = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count();
            if seen >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The first log line containing `text`, waiting for it up to `WAIT`.
    pub fn log_line(&self, text: &str) -> String {
        assert!(
            self.wait_for_log(text),
            "no log line with {text:?}; log:\n{}",
            self.log()
        );
        self.log()
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_default()
            .to_string()
    }

    /// The admin endpoint's address, from the `pier: admin on ADDR` line.
    pub fn admin_addr(&self) -> String {
        assert!(
            self.wait_for_log("pier: admin on "),
            "no admin line; log:\n{}",
            self.log()
        );
        self.log()
            .lines()
            .find_map(|l| l.strip_prefix("pier: admin on "))
            .map(|a| a.trim().to_string())
            .expect("admin address")
    }

    /// The port of the first listener.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Everything written to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends signal `sig` (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pier did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `pier: listening on ADDR (...)` line.
fn listening_addr(line: &str) -> String {
    line.trim_start_matches("pier: listening on ")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A lines-framed client that asks and reads one reply per frame.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    /// Connects, with `WAIT` as the read timeout.
    pub fn connect(addr: &str) -> LineClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        LineClient {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Sends `line` and returns the reply line without its newline; the connection must stay
    /// open.
    pub fn ask(&mut self, line: &str) -> String {
        writeln!(self.writer, "{line}").expect("send: the connection must stay open");
        let mut reply = String::new();
        let n = self.reader.read_line(&mut reply).expect("a reply in time");
        assert!(n > 0, "the server closed the connection");
        reply.trim_end().to_string()
    }
}

/// Sends an HTTP/1.1 GET and returns the whole response (the server closes after it).
pub fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect for GET");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send GET");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

/// The open connections a pier reports at its admin endpoint's `/connections`.
pub fn admin_connections(admin: &str) -> Vec<serde_json::Value> {
    let response = http_get(admin, "/connections");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|list| list.as_array().cloned())
        .unwrap_or_else(|| panic!("a JSON list from /connections: {response}"))
}

/// Polls `check` until it holds, failing the test after `WAIT`.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Certificates from `pier cert generate` in a fresh folder `tmp()/name` — for `hosts` when
/// given, else the localhost names; returns the folder and what the command printed. The one
/// place tests make certificates, so they are what operators get.
pub fn certificates(name: &str, hosts: &[&str]) -> (PathBuf, String) {
    let dir = tmp().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = pier();
    cmd.args([
        "cert",
        "generate",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    if !hosts.is_empty() {
        cmd.args(["--hosts", &hosts.join(",")]);
    }
    let out = cmd.output().expect("pier cert generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8 output");
    (dir, printed)
}
