//! What a listener serves: its name, framing and limits, plugin and connection registry. The
//! accept loop lives in [`crate::server`]; this is the shared description every connection task
//! of the listener reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::framing::Framing;
use crate::hub::{Hub, LocalHub};
use crate::runtime::LoadedPlugin;
use crate::runtime::host::ListenerContext;
use crate::tls::TlsListener;

/// Defaults for a listener's limits.
pub const DEFAULT_WRITE_QUEUE: usize = 1024;

/// Everything connections of one listener share. Cheap to clone (`Arc` inside).
pub struct ListenerShared {
    /// Process-unique id; workers key their plugin instances by it.
    pub id: u64,
    /// The listener's name, on every log line and in the WIT `peer` record.
    pub name: Arc<str>,
    /// How frames are cut.
    pub framing: Framing,
    /// The largest frame a client may send.
    pub max_frame: usize,
    /// The plugin serving it.
    pub plugin: Arc<LoadedPlugin>,
    /// The registry, also reachable from the plugin through `ctx`.
    pub hub: Arc<dyn Hub>,
    /// What plugin instances of this listener are handed.
    pub ctx: Arc<ListenerContext>,
    /// TLS settings, on TLS listeners.
    pub tls: Option<Arc<TlsListener>>,
}

impl ListenerShared {
    /// Describes a plain-TCP listener with an in-process registry.
    pub fn new(
        name: &str,
        framing: Framing,
        max_frame: usize,
        write_queue: usize,
        plugin: Arc<LoadedPlugin>,
    ) -> Arc<Self> {
        Self::with_tls(name, framing, max_frame, write_queue, plugin, None)
    }

    /// Describes a listener, with TLS when `tls` is given.
    pub fn with_tls(
        name: &str,
        framing: Framing,
        max_frame: usize,
        write_queue: usize,
        plugin: Arc<LoadedPlugin>,
        tls: Option<Arc<TlsListener>>,
    ) -> Arc<Self> {
        let name: Arc<str> = Arc::from(name);
        let hub: Arc<dyn Hub> = Arc::new(LocalHub::new(write_queue, max_frame));
        let ctx = Arc::new(ListenerContext {
            name: name.clone(),
            hub: hub.clone(),
        });
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(ListenerShared {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            name,
            framing,
            max_frame,
            plugin,
            hub,
            ctx,
            tls,
        })
    }
}
