//! The store data of a plugin instance and the host side of the interfaces it imports.
//!
//! Every host function validates what the guest passed and answers with the WIT's typed error;
//! none of them can panic or block, so a guest can never take a worker thread down through them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::bindings::pier::plugin::{connections, log, types};
use super::bindings::{Level, Peer, SendError};
use crate::hub::{self, ConnectionId, Hub, PeerInfo};

/// Longest guest log message kept; the rest is cut so a guest cannot flood the log with one call.
const MAX_LOG_MESSAGE: usize = 4096;

/// What one listener gives its plugin instances: its registry and its name for log lines.
pub struct ListenerContext {
    /// The listener's name, on every log line.
    pub name: Arc<str>,
    /// The listener's connections.
    pub hub: Arc<dyn Hub>,
}

/// The data of one instance's `Store`.
pub struct HostState {
    /// The listener the instance serves.
    pub(crate) ctx: Arc<ListenerContext>,
    /// The plugin's name and version, for log lines.
    pub(crate) plugin: Arc<str>,
    /// The connection whose callback is running, so guest log lines can name it.
    pub(crate) current: Option<ConnectionId>,
    /// Enforces the memory cap and remembers whether the guest hit it, which is how a memory
    /// fault is told apart from other traps.
    pub(crate) limiter: MemoryLimiter,
}

impl HostState {
    /// Fresh state for a new instance.
    pub fn new(ctx: Arc<ListenerContext>, plugin: Arc<str>, memory_limit: usize) -> Self {
        HostState {
            ctx,
            plugin,
            current: None,
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: false,
            },
        }
    }
}

/// A `ResourceLimiter` that caps linear memory and records refusals.
pub struct MemoryLimiter {
    /// The most bytes a linear memory may have.
    limit: usize,
    /// Set when a growth was refused.
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real plugin.
        Ok(desired <= 1_000_000)
    }
}

/// Converts the registry's view of a peer into the WIT record.
pub fn peer_record(info: &PeerInfo) -> Peer {
    let connected_at_ms = info
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Peer {
        id: info.id,
        remote_addr: info.remote_addr.clone(),
        local_addr: info.local_addr.clone(),
        listener: info.listener.to_string(),
        tls: None,
        connected_at_ms,
    }
}

/// Milliseconds since the Unix epoch, for records built now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn send_error(err: hub::SendError) -> SendError {
    match err {
        hub::SendError::UnknownConnection => SendError::UnknownConnection,
        hub::SendError::Closing => SendError::Closing,
        hub::SendError::FrameTooLarge => SendError::FrameTooLarge,
        hub::SendError::QueueFull => SendError::QueueFull,
    }
}

impl types::Host for HostState {}

impl connections::Host for HostState {
    fn send(&mut self, to: ConnectionId, frame: Vec<u8>) -> Result<(), SendError> {
        self.ctx
            .hub
            .send(to, Bytes::from(frame))
            .map_err(send_error)
    }

    fn broadcast(&mut self, frame: Vec<u8>, except: Option<ConnectionId>) -> u32 {
        self.ctx.hub.broadcast(Bytes::from(frame), except)
    }

    fn close(&mut self, id: ConnectionId) -> bool {
        self.ctx.hub.close(id)
    }

    fn peers(&mut self) -> Vec<Peer> {
        self.ctx.hub.peers().iter().map(peer_record).collect()
    }

    fn lookup(&mut self, id: ConnectionId) -> Option<Peer> {
        self.ctx.hub.lookup(id).as_ref().map(peer_record)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = truncate(&message, MAX_LOG_MESSAGE);
        let listener = &*self.ctx.name;
        let plugin = &*self.plugin;
        let conn = self.current;
        match level {
            Level::Trace => {
                tracing::trace!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
