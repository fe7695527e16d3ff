//! A real `nats-server` (Debian's package, installed by `.ci/run`) on a reserved port with
//! JetStream in the test's scratch folder, killed on drop; and a line client that collects what
//! it receives in the background, for tests where frames arrive from other nodes at any time.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{WAIT, ports, scratch_dir};

/// One nats-server process.
pub struct Nats {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    args: Vec<String>,
}

impl Nats {
    /// Starts a standalone server for test `test`.
    pub fn start(test: &str) -> Nats {
        Self::start_with(test, &[])
    }

    /// Starts a standalone server that requires the credentials in `auth` (nats-server flags,
    /// e.g. `--user U --pass P`).
    pub fn start_with_auth(test: &str, auth: &[&str]) -> Nats {
        Self::start_with(test, auth)
    }

    /// Starts two servers routed into one NATS cluster (a client of either reaches both).
    pub fn pair(test: &str) -> (Nats, Nats) {
        let (route_a, route_b) = (ports::reserved_port(), ports::reserved_port());
        let routes = format!("nats://127.0.0.1:{route_a},nats://127.0.0.1:{route_b}");
        let a = Self::launched(
            &format!("{test}-a"),
            ports::reserved_port(),
            &[
                "--name",
                "a",
                "--cluster_name",
                "pier-test",
                "--cluster",
                &format!("nats://127.0.0.1:{route_a}"),
                "--routes",
                &routes,
            ],
        );
        let b = Self::launched(
            &format!("{test}-b"),
            ports::reserved_port(),
            &[
                "--name",
                "b",
                "--cluster_name",
                "pier-test",
                "--cluster",
                &format!("nats://127.0.0.1:{route_b}"),
                "--routes",
                &routes,
            ],
        );
        a.wait_ready();
        b.wait_ready();
        (a, b)
    }

    /// Starts a standalone server on `port` (one the nodes were already told about).
    pub fn start_on(test: &str, port: u16) -> Nats {
        Self::start_at(test, port, &[])
    }

    fn start_with(test: &str, extra: &[&str]) -> Nats {
        let nats = Self::launched(test, ports::reserved_port(), extra);
        nats.wait_ready();
        nats
    }

    fn start_at(test: &str, port: u16, extra: &[&str]) -> Nats {
        let nats = Self::launched(test, port, extra);
        nats.wait_ready();
        nats
    }

    /// Started, not yet waited for (routed JetStream servers open their client port only once
    /// they see each other).
    fn launched(test: &str, port: u16, extra: &[&str]) -> Nats {
        let store: PathBuf = scratch_dir(&format!("nats-{test}"));
        let mut args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            store.to_str().expect("utf-8 path"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut nats = Nats {
            child: None,
            port,
            args,
        };
        nats.launch();
        nats
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package `nats-server`, installed by .ci/run) must be installed");
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "nats-server never answered on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when the server greets a client with its INFO line.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, waiting until it answers (the port may be held for a
    /// moment after the kill: polled).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {} stayed busy", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A lines client whose received lines are collected by a thread.
pub struct Lines {
    writer: TcpStream,
    lines: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicBool>,
}

impl Lines {
    /// Connects to `addr`.
    pub fn connect(addr: &str) -> Lines {
        let writer = TcpStream::connect(addr).expect("connect");
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (l, c) = (lines.clone(), closed.clone());
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
            c.store(true, Ordering::SeqCst);
        });
        Lines {
            writer,
            lines,
            closed,
        }
    }

    /// Sends one line.
    pub fn say(&mut self, line: &str) {
        writeln!(self.writer, "{line}").expect("send: the connection must stay open");
    }

    /// How many lines arrived so far.
    pub fn seen(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first line at index `from` or later that `matches`, waiting for it up to `WAIT`.
    pub fn wait_from(&self, from: usize, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let lines = self.lines.lock().unwrap();
                lines
                    .get(from.min(lines.len())..)
                    .and_then(|rest| rest.iter().find(|l| matches(l)).cloned())
            };
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no line {what}; got {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a line `what` (anywhere so far or later).
    pub fn wait(&self, what: &str) -> String {
        self.wait_from(0, what, |l| l == what)
    }

    /// Sends `line` and returns the first later line starting with `prefix`.
    pub fn ask(&mut self, line: &str, prefix: &str) -> String {
        let from = self.seen();
        self.say(line);
        self.wait_from(
            from,
            &format!("starting with {prefix:?} after {line:?}"),
            |l| l.starts_with(prefix),
        )
    }

    /// How many lines so far are exactly `line`.
    pub fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// Waits until the server closed the connection.
    pub fn wait_closed(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.closed.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the connection stayed open");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
