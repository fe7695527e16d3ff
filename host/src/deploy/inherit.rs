//! The new process's side of `pier upgrade`: the listening sockets it inherits instead of
//! binding, and the readiness report to the process it replaces ([`super::handover`] is the
//! old process's side and says how the two meet).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tracing::warn;

/// The environment variable naming the sockets a new process inherits (`key=fd,...`).
pub const INHERIT_VAR: &str = "PIER_INHERIT_FDS";
/// The environment variable naming the pipe a new process reports readiness on.
pub const READY_VAR: &str = "PIER_READY_FD";
/// What a new process writes on the pipe once it serves.
pub const READY: &[u8] = b"ready\n";
/// The admin endpoint's key in [`INHERIT_VAR`].
pub const ADMIN_KEY: &str = "admin";

/// Listening sockets passed down by the process this one replaces, by key.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<String, OwnedFd>,
}

impl Inherited {
    /// The sockets named in `PIER_INHERIT_FDS` (none when it is unset). An entry that does not
    /// name an open descriptor is skipped with a warning. Each one is made close-on-exec again,
    /// so it does not leak into processes this one starts.
    pub fn from_env() -> Inherited {
        let Some(list) = std::env::var_os(INHERIT_VAR) else {
            return Inherited::default();
        };
        let mut sockets = HashMap::new();
        for entry in list.to_string_lossy().split(',').filter(|e| !e.is_empty()) {
            match entry
                .split_once('=')
                .map(|(k, fd)| (k, fd.parse::<RawFd>()))
            {
                Some((key, Ok(fd))) => match adopt(fd) {
                    Some(fd) => {
                        sockets.insert(key.to_string(), fd);
                    }
                    None => warn!("{INHERIT_VAR}: descriptor {fd} for `{key}` is not open"),
                },
                _ => warn!("{INHERIT_VAR}: ignoring malformed entry `{entry}`"),
            }
        }
        Inherited { sockets }
    }

    /// True when nothing was inherited (a process started by hand).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The inherited socket `key`, if there is one and it listens on `addr` (port 0 in `addr`
    /// matches any port). A socket on another address (the config changed in between) is
    /// closed and `None` returned, so the caller binds afresh.
    pub fn take(&mut self, key: &str, addr: SocketAddr) -> Result<Option<TcpListener>> {
        let Some(fd) = self.sockets.remove(key) else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::from(fd);
        let bound = listener
            .local_addr()
            .with_context(|| format!("inherited socket `{key}` is not a TCP socket"))?;
        if bound.ip() != addr.ip() || (addr.port() != 0 && bound.port() != addr.port()) {
            warn!("inherited socket `{key}` listens on {bound}, not {addr}: binding afresh");
            return Ok(None);
        }
        listener
            .set_nonblocking(true)
            .context("cannot make an inherited socket non-blocking")?;
        Ok(Some(
            TcpListener::from_std(listener).context("cannot register an inherited socket")?,
        ))
    }

    /// Closes the inherited sockets nothing took (listeners the new config no longer has).
    pub fn close_rest(&mut self) {
        for (key, _) in self.sockets.drain() {
            warn!("inherited socket `{key}` is not in this config; closed");
        }
    }
}

/// Takes ownership of descriptor `fd` if it is open, marking it close-on-exec.
fn adopt(fd: RawFd) -> Option<OwnedFd> {
    if fd < 3 {
        return None;
    }
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; an fd that is not
    // open fails with EBADF, which is checked before anything takes ownership of it.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return None;
        }
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        // SAFETY: the descriptor is open and was passed to this process for it to own: the
        // process that started this one named it in the environment and keeps no claim on
        // this process's copy.
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// Tells the process this one replaces that it serves now (nothing when started by hand).
pub fn notify_ready() {
    let Some(fd) = std::env::var_os(READY_VAR).and_then(|v| v.to_str()?.parse::<RawFd>().ok())
    else {
        return;
    };
    let Some(fd) = adopt(fd) else {
        warn!("{READY_VAR}: descriptor {fd} is not open");
        return;
    };
    if let Err(err) = std::fs::File::from(fd).write_all(READY) {
        warn!("cannot tell the previous process that this one is ready: {err}");
    }
}
