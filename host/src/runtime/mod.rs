//! The plugin runtime: one wasmtime `Engine` for the process, compiled plugins, and the
//! per-worker instances that run them.
//!
//! Settings follow the measurements in DESIGN.md: component-model concurrency off (it makes every
//! call 2–3× slower), epoch interruption with a deadline per call, the pooling allocator with a
//! memory reservation sized to the memory limit rather than 4 GiB, and a per-store memory cap.
//!
//! - [`bindings`]: the generated Rust side of `wit/plugin.wit`.
//! - [`cache`]: compiled components on disk.
//! - [`plugin`]: loading and checking a component against the world.
//! - [`context`]: what a listener gives its plugin's instances.
//! - [`host`]: the store data and the host side of the imported interfaces, a file each.
//! - [`instance`]: one worker's instance, calls with deadlines, fault recovery.
//! - [`pool`]: one worker's instances per tenant, leased per call.
//! - [`fair`]: how a worker's CPU is shared between tenants.
//! - [`fault`]: fault kinds and per-listener fault counts.

pub mod bindings;
pub mod cache;
pub mod context;
pub mod fair;
pub mod fault;
pub mod host;
pub mod instance;
pub mod output;
pub mod plugin;
pub mod pool;
pub mod slot;
pub mod wasi;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use self::cache::ArtifactCache;
use self::host::HostState;

pub use self::context::PluginConfig;
pub use self::fault::FaultKind;
pub use self::instance::{Fault, PluginInstance};
pub use self::plugin::{LoadError, LoadedPlugin};
pub use self::slot::{Deployment, PluginSlot};
pub use crate::limits::InstanceLimits;

/// How often the epoch advances; call deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Limits and locations for the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Largest linear memory one plugin instance may grow to.
    pub memory_limit: usize,
    /// Longest a single guest call may run before it is interrupted.
    pub call_deadline: Duration,
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin instances may exist at once (pool slots), across all workers, listeners
    /// and plugin versions.
    pub max_instances: u32,
    /// Replace a worker's instance after this many calls (fresh guest memory; bounds the damage
    /// of a plugin that leaks). `None`: keep it until it faults.
    pub recycle_after: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            memory_limit: 64 * 1024 * 1024,
            call_deadline: Duration::from_secs(1),
            cache_dir: ArtifactCache::default_dir(),
            max_instances: 1000,
            recycle_after: None,
        }
    }
}

/// The process-wide engine, linker and cache.
pub struct Runtime {
    /// Compiles and runs every plugin.
    engine: Engine,
    /// The host's imports, shared by every plugin.
    linker: Linker<HostState>,
    /// Compiled plugins on disk, if a cache directory is usable.
    cache: Option<ArtifactCache>,
    /// The limits every instance runs under.
    config: RuntimeConfig,
    /// Stops the epoch thread when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Creates the engine with pier's settings and starts the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Arc<Self>> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(anyhow::Error::from)
            .context("cannot configure the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        // Deny-by-default WASI for guests whose standard library imports it (`wasi`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI")?;
        let cache = config.cache_dir.as_deref().and_then(|dir| {
            ArtifactCache::open(dir, &engine)
                .inspect_err(|err| tracing::warn!("plugin cache disabled: {err:#}"))
                .ok()
        });
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, ticker_stop.clone())?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            config,
            ticker_stop,
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// How many epoch ticks a call may run under the runtime's default deadline.
    pub fn deadline_ticks(&self) -> u64 {
        deadline_ticks(self.config.call_deadline)
    }

    /// The limits a listener gets when it sets none of its own.
    pub fn default_limits(&self) -> InstanceLimits {
        InstanceLimits {
            memory: self.config.memory_limit,
            call_deadline: self.config.call_deadline,
        }
    }
}

/// How many epoch ticks a call may run: the deadline rounded up, plus one because the current
/// tick may be about to end.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_micros().div_ceil(EPOCH_TICK.as_micros());
    u64::try_from(ticks).unwrap_or(u64::MAX / 2).max(1) + 1
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn engine_config(rc: &RuntimeConfig) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.concurrency_support(false);
    config.epoch_interruption(true);
    let reservation = (rc.memory_limit as u64).next_power_of_two().max(1 << 20);
    config.memory_reservation(reservation);
    config.memory_reservation_for_growth(0);
    config.memory_guard_size(2 << 20);

    let slots = rc.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        // A Rust component is a handful of core instances (the program plus the adapter shims
        // wit-component adds), each with at most a memory or two and a table.
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(8))
        .max_memory_size(rc.memory_limit);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from a plain thread, which is all epoch
/// interruption needs; the thread holds only a weak reference so it never keeps an engine alive.
fn spawn_epoch_ticker(engine: &Engine, stop: Arc<AtomicBool>) -> Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("pier-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .context("cannot start the epoch thread")?;
    Ok(())
}
