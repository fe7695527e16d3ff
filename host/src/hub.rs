//! The connection registry of one listener: who is connected, and how to reach them.
//!
//! This is the durable state behind the WIT `connections` interface. It lives in the host and is
//! shared by every worker thread and every plugin instance of the listener, so a plugin instance
//! can be recreated at any moment without losing track of anyone. It sits behind the narrow
//! [`Hub`] trait because it is the one piece that will later span machines; [`LocalHub`] is the
//! in-process implementation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Identifies a connection; unique for the process lifetime and never reused.
pub type ConnectionId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Hands out the next connection id.
pub fn next_connection_id() -> ConnectionId {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the host knows about a connected peer (mirrors WIT `types.peer`).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The connection id.
    pub id: ConnectionId,
    /// The client's address.
    pub remote_addr: String,
    /// The local address it connected to.
    pub local_addr: String,
    /// The listener's name.
    pub listener: Arc<str>,
    /// When it was accepted.
    pub connected_at: SystemTime,
}

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

/// The registry operations the plugin API needs. Narrow on purpose: anything richer (groups,
/// attributes) is added as new methods with the same at-most-once, never-blocking semantics.
pub trait Hub: Send + Sync {
    /// Adds a connection; its frames arrive on the returned [`Mailbox`].
    fn register(&self, peer: PeerInfo) -> Mailbox;
    /// Removes a connection; later sends to it fail with `UnknownConnection`.
    fn unregister(&self, id: ConnectionId);
    /// Queues a frame for one connection without waiting.
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

/// The receiving end of a connection's queue, owned by the connection task.
pub struct Mailbox {
    /// Frames other connections (or the plugin) queued for this one, in order.
    pub frames: mpsc::Receiver<Bytes>,
    /// Cancelled when the plugin asks for the connection to be closed. Separate from the frame
    /// queue so a close request is never lost to a full queue.
    pub close: CancellationToken,
}

struct Entry {
    peer: PeerInfo,
    frames: mpsc::Sender<Bytes>,
    close: CancellationToken,
}

/// The in-process [`Hub`]: a map from id to each connection's queue.
pub struct LocalHub {
    /// Open connections. Read-mostly (sends, broadcasts) with a write per open and close.
    entries: RwLock<HashMap<ConnectionId, Entry>>,
    /// Frames a connection may have queued but not yet written; beyond it sends fail with
    /// `QueueFull` so a client that does not read cannot make the host buffer without bound.
    write_queue: usize,
    /// The listener's maximum frame size.
    max_frame: usize,
}

impl LocalHub {
    /// An empty registry whose connections each queue at most `write_queue` frames.
    pub fn new(write_queue: usize, max_frame: usize) -> Self {
        LocalHub {
            entries: RwLock::new(HashMap::new()),
            write_queue: write_queue.max(1),
            max_frame,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionId, Entry>> {
        // A poisoned lock means a panic elsewhere while holding it; the map itself is still
        // consistent (every mutation is a single insert/remove), so keep serving.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionId, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn queue(entry: &Entry, frame: Bytes) -> Result<(), SendError> {
    if entry.close.is_cancelled() {
        return Err(SendError::Closing);
    }
    entry.frames.try_send(frame).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
        mpsc::error::TrySendError::Closed(_) => SendError::Closing,
    })
}

impl Hub for LocalHub {
    fn register(&self, peer: PeerInfo) -> Mailbox {
        let (tx, rx) = mpsc::channel(self.write_queue);
        let close = CancellationToken::new();
        let id = peer.id;
        self.write().insert(
            id,
            Entry {
                peer,
                frames: tx,
                close: close.clone(),
            },
        );
        Mailbox { frames: rx, close }
    }

    fn unregister(&self, id: ConnectionId) {
        self.write().remove(&id);
    }

    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError> {
        if frame.len() > self.max_frame {
            return Err(SendError::FrameTooLarge);
        }
        let entries = self.read();
        let entry = entries.get(&to).ok_or(SendError::UnknownConnection)?;
        queue(entry, frame)
    }

    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.max_frame {
            return 0;
        }
        let entries = self.read();
        let delivered = entries
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter(|(_, entry)| queue(entry, frame.clone()).is_ok())
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    fn close(&self, id: ConnectionId) -> bool {
        match self.read().get(&id) {
            Some(entry) => {
                entry.close.cancel();
                true
            }
            None => false,
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.read().values().map(|e| e.peer.clone()).collect()
    }

    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo> {
        self.read().get(&id).map(|e| e.peer.clone())
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: ConnectionId) -> PeerInfo {
        PeerInfo {
            id,
            remote_addr: "127.0.0.1:1".into(),
            local_addr: "127.0.0.1:2".into(),
            listener: Arc::from("test"),
            connected_at: SystemTime::now(),
        }
    }

    #[test]
    fn send_reports_each_failure_kind() {
        let hub = LocalHub::new(1, 4);
        let mut mb = hub.register(peer(1));
        assert_eq!(
            hub.send(2, Bytes::from_static(b"x")),
            Err(SendError::UnknownConnection)
        );
        assert_eq!(
            hub.send(1, Bytes::from_static(b"12345")),
            Err(SendError::FrameTooLarge)
        );
        assert_eq!(hub.send(1, Bytes::from_static(b"a")), Ok(()));
        assert_eq!(
            hub.send(1, Bytes::from_static(b"b")),
            Err(SendError::QueueFull)
        );
        assert_eq!(mb.frames.try_recv().unwrap(), Bytes::from_static(b"a"));
        assert!(hub.close(1));
        assert_eq!(
            hub.send(1, Bytes::from_static(b"c")),
            Err(SendError::Closing)
        );
        hub.unregister(1);
        assert!(!hub.close(1));
    }

    #[test]
    fn broadcast_skips_the_sender_and_full_queues() {
        let hub = LocalHub::new(1, 64);
        let _a = hub.register(peer(1));
        let _b = hub.register(peer(2));
        let _c = hub.register(peer(3));
        hub.send(3, Bytes::from_static(b"fill")).unwrap();
        assert_eq!(hub.broadcast(Bytes::from_static(b"hi"), Some(1)), 1);
        assert_eq!(hub.peers().len(), 3);
    }
}
