//! Which plugin version a listener runs right now, and the hand-over to the next one.
//!
//! A reload publishes a new [`Deployment`] here and bumps the generation. Every
//! [`super::PluginInstance`] compares generations before each guest call — one atomic load —
//! and moves to the new version between two calls. Because a connection's calls run one at a
//! time, in frame order, on its worker, "between two calls" is a frame boundary: no frame is
//! lost, answered twice or reordered, and no connection notices.

use super::context::PluginConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::LoadedPlugin;
use crate::ops::metrics::{ListenerMetrics, VersionMetrics};

/// One version of a listener's plugin together with its configuration.
#[derive(Debug)]
pub struct Deployment {
    /// The compiled, checked plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// The operator's `plugin_config` for it.
    pub config: Arc<PluginConfig>,
    /// Increases by one per swap; instances compare it to know they are stale.
    pub generation: u64,
    /// When this version started serving.
    pub deployed_at: SystemTime,
    /// This version's traffic, call and fault metrics on the listener.
    pub metrics: VersionMetrics,
}

impl Deployment {
    fn new(
        plugin: Arc<LoadedPlugin>,
        config: PluginConfig,
        generation: u64,
        listener: &ListenerMetrics,
    ) -> Self {
        Deployment {
            metrics: listener.version(&plugin.name, &plugin.version, super::FaultKind::NAMES),
            plugin,
            config: Arc::new(config),
            generation,
            deployed_at: SystemTime::now(),
        }
    }
}

/// The current deployment of one listener.
#[derive(Debug)]
pub struct PluginSlot {
    /// Read on every instance creation and on every swap; written only by reloads.
    current: RwLock<Arc<Deployment>>,
    /// Mirrors `current.generation` so the per-call staleness check takes no lock.
    generation: AtomicU64,
    /// The listener's metrics, under which each version's are created.
    metrics: Arc<ListenerMetrics>,
}

impl PluginSlot {
    /// A slot serving `plugin` with `config`, generation 1, counting under `metrics`.
    pub fn new(
        plugin: Arc<LoadedPlugin>,
        config: PluginConfig,
        metrics: Arc<ListenerMetrics>,
    ) -> Self {
        let deployment = Deployment::new(plugin, config, 1, &metrics);
        PluginSlot {
            current: RwLock::new(Arc::new(deployment)),
            generation: AtomicU64::new(1),
            metrics,
        }
    }

    /// The deployment serving now.
    pub fn current(&self) -> Arc<Deployment> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes a new version; instances pick it up before their next call. Returns the new
    /// generation.
    pub fn swap(&self, plugin: Arc<LoadedPlugin>, config: PluginConfig) -> u64 {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let generation = current.generation + 1;
        let next = Deployment::new(plugin, config, generation, &self.metrics);
        let previous = std::mem::replace(&mut *current, Arc::new(next));
        if (&previous.plugin.name, &previous.plugin.version)
            != (&current.plugin.name, &current.plugin.version)
        {
            self.metrics
                .retire_version(&previous.plugin.name, &previous.plugin.version);
        }
        // Published while the write lock is held, so a reader that sees the new generation
        // also finds the new deployment.
        self.generation.store(generation, Ordering::Release);
        generation
    }
}
