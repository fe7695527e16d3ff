//! Replacing the pier process itself without closing a listening socket (`pier upgrade`).
//!
//! On SIGUSR2 the old process starts the binary it was started from, with its own arguments,
//! passing every listening socket (listeners, doors, the admin endpoint) as inherited file
//! descriptors named in `PIER_INHERIT_FDS` (`key=fd,...`, keys from
//! [`crate::net::server::socket_key`] and `admin`), and the write end of a pipe in
//! `PIER_READY_FD`. The new process takes those sockets instead of binding
//! ([`super::inherit::Inherited`]), starts as usual and writes `ready` on the pipe once it serves
//! ([`super::inherit::notify_ready`]). Only then
//! does the old process stop accepting. The sockets are never closed in between, so a client
//! connecting during the switch meets no refusal: both processes accept from the same kernel
//! queue until the old one lets go. Open connections cannot move between processes; the old
//! process serves them until they leave or its drain timeout passes, then exits.
//!
//! Why descriptors and not `SO_REUSEPORT`: with two sockets bound to one port the kernel
//! spreads new connections by hash, and connections queued on the old socket when it closes
//! are reset. One shared socket has one queue, which the new process drains.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tracing::{error, info, warn};

use super::inherit::{ADMIN_KEY, INHERIT_VAR, READY, READY_VAR};
use crate::net::server::Server;

/// How this process was started, recorded at start-up: the binary may be replaced on disk
/// later (that is the point), and the new one is started from the same path.
pub struct Relaunch {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Relaunch {
    /// This process's binary path and arguments.
    pub fn recorded() -> Result<Relaunch> {
        let exe = std::env::current_exe().context("cannot tell which binary this process runs")?;
        Ok(Relaunch {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the binary again with `sockets` and waits until it reports ready (its pid) or
    /// fails: it exited, or `timeout` passed (then it is killed). On failure nothing changed:
    /// this process still holds and serves every socket.
    pub async fn start(&self, sockets: Vec<(String, OwnedFd)>, timeout: Duration) -> Result<u32> {
        let (mut ready_rx, ready_tx) = std::io::pipe().context("cannot make a pipe")?;
        let ready_fd = ready_tx.as_raw_fd();
        let listed: Vec<String> = sockets
            .iter()
            .map(|(key, fd)| format!("{key}={}", fd.as_raw_fd()))
            .collect();
        let mut passed: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        passed.push(ready_fd);
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env(INHERIT_VAR, listed.join(","))
            .env(READY_VAR, ready_fd.to_string())
            .stdin(Stdio::null());
        // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
        // which is async-signal-safe; it allocates nothing (`passed` was built before fork).
        unsafe {
            command.pre_exec(move || {
                for &fd in &passed {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        let pid = child.id();
        // The child has its copies; closing ours means the pipe reads end-of-file if the child
        // exits without reporting.
        drop(ready_tx);
        drop(sockets);
        info!("upgrade: started {} as process {pid}", self.exe.display());
        let read = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let _ = (&mut ready_rx).take(64).read_to_end(&mut got);
            got
        });
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(got)) if got == READY => Ok(pid),
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "the new process {pid} stopped before it was ready ({status}); see its log above"
                )
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the new process {pid} was not ready within {timeout:?}; killed it")
            }
        }
    }
}

/// Where the old process writes the outcome of an upgrade, beside the pid file, for
/// `pier upgrade` to read: `ready PID` or `failed: REASON`.
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".upgrade");
    PathBuf::from(path)
}

/// What `pier upgrade --pid-file F` does: signals the process in `F` and waits (up to
/// `timeout`) for its verdict. Returns the new process's pid.
pub fn request(pid_file: &Path, timeout: Duration) -> Result<u32> {
    let pid = read_pid(pid_file)?;
    let status = status_path(pid_file);
    match std::fs::remove_file(&status) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).context(format!("cannot remove {}", status.display())),
    }
    // SAFETY: kill(2) with a positive pid and SIGUSR2 has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGUSR2) } != 0 {
        bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && text.ends_with('\n')
        {
            let text = text.trim();
            return match text.strip_prefix("ready ") {
                Some(new) => new
                    .parse()
                    .map_err(|_| anyhow!("{} holds `{text}`", status.display())),
                None => bail!("process {pid} did not upgrade: {text}"),
            };
        }
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            bail!("process {pid} ended before it reported the upgrade");
        }
        if std::time::Instant::now() > deadline {
            bail!("process {pid} reported nothing within {timeout:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a pid file `pier serve --pid-file` wrote.
pub fn read_pid(file: &Path) -> Result<i32> {
    let pid: i32 = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the pid file {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", file.display()))?;
    if pid <= 0 {
        bail!("{pid} is not a process id");
    }
    Ok(pid)
}

/// Records an upgrade's outcome in the status file beside `pid_file`.
pub fn write_status(pid_file: &Path, outcome: &Result<u32>) {
    let text = match outcome {
        Ok(pid) => format!("ready {pid}\n"),
        Err(err) => format!("failed: {}\n", format!("{err:#}").replace('\n', " ")),
    };
    let path = status_path(pid_file);
    // Written whole then renamed, so a reader never sees half a line.
    let tmp = status_path(&path);
    if let Err(err) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        warn!("cannot write {}: {err}", path.display());
    }
}

/// Waits for SIGUSR2 and upgrades on it, until one upgrade succeeded (true) or `shutdown`
/// completed (false). A failed upgrade changes nothing: this process keeps serving.
pub async fn upgrade_requests(
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    server: &Server,
    relaunch: &Relaunch,
    admin: &Option<std::os::fd::OwnedFd>,
    pid_file: Option<&Path>,
) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(usr2) => Some(usr2),
        Err(err) => {
            warn!("cannot listen for SIGUSR2; `pier upgrade` will not work: {err}");
            None
        }
    };
    loop {
        let requested = async {
            match usr2.as_mut() {
                Some(usr2) => usr2.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut *shutdown => return false,
            _ = requested => {}
        }
        eprintln!("pier: SIGUSR2 received, upgrading");
        let outcome = hand_over(server, relaunch, admin).await;
        if let Some(path) = pid_file {
            write_status(path, &outcome);
        }
        match outcome {
            Ok(pid) => {
                eprintln!(
                    "pier: process {pid} serves now; no longer accepting, serving open connections"
                );
                return true;
            }
            Err(err) => error!("upgrade failed, still serving: {err:#}"),
        }
    }
}

/// Starts the new process on this one's listening sockets; its pid once it is ready.
async fn hand_over(
    server: &Server,
    relaunch: &Relaunch,
    admin: &Option<std::os::fd::OwnedFd>,
) -> Result<u32> {
    let mut sockets = server.listening_sockets()?;
    if let Some(admin) = admin {
        sockets.push((ADMIN_KEY.to_string(), admin.try_clone()?));
    }
    relaunch.start(sockets, UPGRADE_READY_TIMEOUT).await
}

/// How long an upgrade waits for the new process to serve (it compiles every plugin the cache
/// does not hold).
const UPGRADE_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// After an upgrade: serves the open connections until they have all closed or the drain
/// timeout passed (or SIGTERM/SIGINT came), logging what is left now and then.
pub async fn serve_until_left(
    server: &Server,
    drain_timeout: Duration,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) {
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let open = server.open_connections();
        if open == 0 {
            info!("upgrade: every connection has closed");
            return;
        }
        tokio::select! {
            () = &mut *shutdown => return,
            () = tokio::time::sleep_until(deadline) => {
                info!("upgrade: drain timeout passed with {open} connections open");
                return;
            }
            _ = tick.tick() => {}
        }
    }
}
