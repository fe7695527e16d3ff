//! The WIT `connections` side of the registry: who is open, sending to one, all, and closing.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::mailbox::Control;
use super::{ConnectionId, LocalHub, PeerInfo};

/// Why a frame could not be queued (mirrors WIT `connections.send-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// The connection is closing.
    #[error("the connection is closing")]
    Closing,
    /// The frame is above the listener's frame limit.
    #[error("the frame is larger than the frame limit")]
    FrameTooLarge,
    /// The connection's write queue is full.
    #[error("the connection's write queue is full")]
    QueueFull,
}

/// Reaching a listener's connections (WIT `connections`).
pub trait Connections: Send + Sync {
    /// Queues a frame for one connection.
    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError>;
    /// Queues a frame for every connection but `except`; returns how many took it.
    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32;
    /// Asks a connection to close after flushing what is queued; false if it is not open.
    fn close(&self, id: ConnectionId) -> bool;
    /// Every open connection.
    fn peers(&self) -> Vec<PeerInfo>;
    /// One open connection.
    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo>;
    /// The frame limit `send` enforces.
    fn max_frame(&self) -> usize;
}

impl Connections for LocalHub {
    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > self.max_frame {
            return Err(SendError::FrameTooLarge);
        }
        let entries = self.read();
        let entry = entries.get(&to).ok_or(SendError::UnknownConnection)?;
        entry.queue(frame, &self.full)
    }

    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.max_frame {
            return 0;
        }
        let entries = self.read();
        let delivered = entries
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, entry)| entry.queue(frame.clone(), &self.full).is_ok())
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    fn close(&self, id: ConnectionId) -> bool {
        match self.read().get(&id) {
            Some(entry) if entry.is_open() => {
                if !entry.close_requested.swap(true, Ordering::Relaxed) {
                    entry.control(Control::Close);
                }
                true
            }
            _ => false,
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.read()
            .values()
            .filter(|e| e.is_open())
            .map(|e| e.peer.clone())
            .collect()
    }

    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo> {
        self.read()
            .get(&id)
            .filter(|e| e.is_open())
            .map(|e| e.peer.clone())
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }
}
