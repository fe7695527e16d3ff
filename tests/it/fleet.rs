//! Several pier processes on one machine: with `reuse_port` they share a listening port and
//! the kernel spreads new connections over them; `pier upgrade` replaces a running process with
//! a new binary on the same sockets while clients keep connecting.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::served::{self, LineClient, PIER, Served, eventually};
use crate::support::{WAIT, ports, scratch_dir};

#[test]
fn two_processes_with_reuse_port_share_one_port_and_both_accept() {
    let listen = format!("127.0.0.1:{}", ports::reserved_port());
    let args = [
        "--listen",
        &listen,
        "--framing",
        "lines",
        "--reuse-port",
        "--admin",
        "127.0.0.1:0",
    ];
    let first = Served::start(&args);
    let second = Served::start(&args);
    let (first_admin, second_admin) = (first.admin_addr(), second.admin_addr());
    // Each connection is answered by whichever process the kernel gave it to; all stay open.
    let clients: Vec<LineClient> = (0..40)
        .map(|i| {
            let mut client = LineClient::connect(&listen);
            assert_eq!(client.ask(&format!("hi {i}")), format!("Echo: hi {i}"));
            client
        })
        .collect();
    let (on_first, on_second) = (
        served::admin_connections(&first_admin).len(),
        served::admin_connections(&second_admin).len(),
    );
    assert_eq!(
        on_first + on_second,
        clients.len(),
        "every client is on one of them"
    );
    // The kernel hashes each connection's addresses and ports to a socket: 40 distinct source
    // ports all landing on one of two sockets has odds of one in 2^39.
    assert!(
        on_first > 0 && on_second > 0,
        "connections spread over both: {on_first} and {on_second}"
    );
}

/// A copy of the `pier` binary in the test's scratch folder, so the test can replace it on disk
/// the way an operator installs a fixed version: the new file is written beside it and renamed
/// over it (writing into a running binary fails with ETXTBSY).
struct Installed {
    dir: PathBuf,
    binary: PathBuf,
    pid_file: PathBuf,
}

impl Installed {
    fn new(test: &str) -> Installed {
        let dir = scratch_dir(test);
        let installed = Installed {
            binary: dir.join("pier"),
            pid_file: dir.join("pier.pid"),
            dir,
        };
        installed.replace_with_pier();
        installed
    }

    /// Puts a copy of the binary under test in place.
    fn replace_with_pier(&self) {
        let fresh = self.dir.join("pier.new");
        std::fs::copy(PIER, &fresh).expect("copy the pier binary");
        std::fs::rename(&fresh, &self.binary).expect("install the copy");
    }

    /// Puts a "binary" in place that prints an error and exits, as a broken build would.
    fn replace_with_broken(&self) {
        let fresh = self.dir.join("pier.new");
        std::fs::write(
            &fresh,
            "#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 3\n",
        )
        .expect("write the broken binary");
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        std::fs::rename(&fresh, &self.binary).expect("install the broken binary");
    }

    /// `pier serve` from the installed binary: echo on lines, with a pid file and an admin
    /// endpoint.
    fn serve(&self) -> Served {
        let pid_file = self.pid_file.to_str().expect("utf-8 path");
        Served::start_binary(
            &self.binary,
            &[
                "--framing",
                "lines",
                "--pid-file",
                pid_file,
                "--admin",
                "127.0.0.1:0",
                "--drain-timeout",
                "5m",
            ],
            1,
            WAIT,
            &[],
        )
    }

    /// Runs `pier upgrade --pid-file` (the binary under test) and returns its exit status and
    /// what it printed.
    fn upgrade(&self) -> (std::process::ExitStatus, String) {
        let out = served::pier()
            .args(["upgrade", "--pid-file"])
            .arg(&self.pid_file)
            .output()
            .expect("run pier upgrade");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    }

    /// The pid the pid file holds.
    fn pid(&self) -> u32 {
        std::fs::read_to_string(&self.pid_file)
            .expect("the pid file")
            .trim()
            .parse()
            .expect("a pid")
    }
}

impl Drop for Installed {
    /// The process an upgrade started is not the test's child: it is killed by its pid.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Connects, sends one line and checks the echo, over and over on one thread, counting the
/// cycles and recording every failure (refused, reset, wrong or missing reply) until stopped.
struct ClientLoop {
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(addr: &str) -> ClientLoop {
        let (done, failures, stop): (Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) =
            Default::default();
        let (d, f, s) = (Arc::clone(&done), Arc::clone(&failures), Arc::clone(&stop));
        let addr = addr.to_string();
        let thread = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let line = format!("cycle {i}");
                match one_cycle(&addr, &line) {
                    Ok(reply) if reply == format!("Echo: {line}") => {}
                    Ok(reply) => f.lock().unwrap().push(format!("{line}: got {reply:?}")),
                    Err(err) => f.lock().unwrap().push(format!("{line}: {err}")),
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        ClientLoop {
            done,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the loop; the failures it saw.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the client loop");
        }
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

fn one_cycle(addr: &str, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    writeln!(stream, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}

#[test]
fn upgrade_under_load_refuses_no_connection_and_the_old_process_drains_then_exits_0() {
    let installed = Installed::new("upgrade-under-load");
    let mut served = installed.serve();
    let old = served.child.id();
    let admin = served.admin_addr();
    // Connected to the old process before the switch, and kept open across it.
    let mut long_lived = LineClient::connect(&served.addr);
    assert_eq!(long_lived.ask("before"), "Echo: before");

    let clients = ClientLoop::start(&served.addr);
    eventually("500 cycles before the switch", || clients.done() >= 500);
    installed.replace_with_pier();
    let (status, printed) = installed.upgrade();
    assert!(status.success(), "pier upgrade failed: {printed}");
    let new = installed.pid();
    assert_ne!(new, old, "the pid file names the new process");
    assert!(
        printed.contains(&format!(
            "upgraded: process {old} handed its sockets to process {new}"
        )),
        "{printed}"
    );
    assert!(served.wait_for_log(&format!(
        "taking over the listening sockets of process {old}"
    )));
    // From here only the new process accepts; the loop goes on against it.
    let at_switch = clients.done();
    eventually("2,000 cycles in all and 500 after the switch", || {
        clients.done() >= 2_000.max(at_switch + 500)
    });
    let cycles = clients.done();
    let failures = clients.finish();
    assert!(
        failures.is_empty(),
        "{} of {cycles} cycles failed across the upgrade, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The old process still serves the connection it had, and only that one.
    assert_eq!(long_lived.ask("after"), "Echo: after");
    assert!(
        served.child.try_wait().expect("try_wait").is_none(),
        "the old process must live while a client is connected to it"
    );
    // The admin address was handed over too: the new process answers it.
    assert!(served::http_get(&admin, "/healthz").contains(" 200 "));
    drop(long_lived);
    let status = served.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", served.log());
    let mut fresh = LineClient::connect(&served.addr);
    assert_eq!(fresh.ask("still here"), "Echo: still here");
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving_and_says_why() {
    let installed = Installed::new("upgrade-failed");
    let served = installed.serve();
    let old = served.child.id();
    let mut connected = LineClient::connect(&served.addr);
    assert_eq!(connected.ask("one"), "Echo: one");

    installed.replace_with_broken();
    let (status, printed) = installed.upgrade();
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(&format!("process {old} did not upgrade"))
            && printed.contains("stopped before it was ready"),
        "{printed}"
    );
    assert!(served.wait_for_log("upgrade failed, still serving"));
    assert_eq!(
        installed.pid(),
        old,
        "the pid file still names the old process"
    );
    // Nothing changed for clients, connected or new.
    assert_eq!(connected.ask("two"), "Echo: two");
    let mut fresh = LineClient::connect(&served.addr);
    assert_eq!(fresh.ask("three"), "Echo: three");

    // With a working binary in place the same process upgrades.
    installed.replace_with_pier();
    let (status, printed) = installed.upgrade();
    assert!(status.success(), "{printed}");
    assert_ne!(installed.pid(), old);
    let mut on_new = LineClient::connect(&served.addr);
    assert_eq!(on_new.ask("four"), "Echo: four");
}
