//! Loading a plugin: bytes in, a checked, linked, ready-to-instantiate plugin out.
//!
//! Every way a file can fail to be a pier plugin gets its own [`LoadError`] with a sentence an
//! operator can act on (not WebAssembly, a core module instead of a component, an import pier
//! does not provide, an export missing or of the wrong type). `pier serve` and `pier check` share
//! this path, so `check` says exactly what `serve` would.

use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, types::ComponentItem};

use super::Runtime;
use super::bindings::PluginPre;
use super::context::ListenerContext;
use super::host::HostState;
use crate::tenant::hub::LocalHub;

/// The package whose interfaces pier provides and expects.
const PACKAGE: &str = "pier:plugin/";
/// The one export every plugin must have.
const HANDLER_EXPORT: &str = "pier:plugin/handler@0.1.0";
/// The optional export of plugins that use timers.
const TIMER_EXPORT: &str = "pier:plugin/timer-handler@0.1.0";

/// The optional export of plugins that take batches of frames.
const BATCH_EXPORT: &str = "pier:plugin/batch-handler@0.1.0";

/// The optional export of plugins that carry state across a reload.
const STATE_EXPORT: &str = "pier:plugin/state-handler@0.1.0";

/// The type of `state-handler.snapshot`.
pub type Snapshot = wasmtime::component::TypedFunc<(), (Vec<u8>,)>;

/// The type of `state-handler.restore` (for any lifetime of the state).
pub type Restore<'a> = wasmtime::component::TypedFunc<(&'a [u8],), ()>;

/// The type of `timer-handler.on-timer`.
pub type OnTimer = wasmtime::component::TypedFunc<(u64, u64), (Option<Vec<u8>>,)>;

/// The type of `batch-handler.on-frames` (for any lifetime of the frames).
pub type OnFrames<'a> =
    wasmtime::component::TypedFunc<(u64, &'a [u8], &'a [u32]), ((Vec<u8>, Vec<i32>),)>;

/// Where a plugin's optional exports are, found once at load.
#[derive(Clone, Debug, Default)]
pub struct OptionalExports {
    /// `timer-handler.on-timer`.
    pub on_timer: Option<ComponentExportIndex>,
    /// `batch-handler.on-frames`.
    pub on_frames: Option<ComponentExportIndex>,
    /// `state-handler.snapshot` and `state-handler.restore` (both or neither).
    pub state: Option<(ComponentExportIndex, ComponentExportIndex)>,
}

/// Why a file is not a usable plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build it with `--target wasm32-wasip2` \
         (or wrap it with `wasm-tools component new`)"
    )]
    NotComponent,
    /// WebAssembly that does not validate or compile.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// It imports something the host does not provide.
    #[error(
        "imports `{0}`, which pier does not provide (pier provides pier:plugin/* and WASI, \
         deny by default)"
    )]
    UnsupportedImport(String),
    /// It does not export `pier:plugin/handler`.
    #[error("does not export `{HANDLER_EXPORT}` (it exports: {0})")]
    MissingHandler(String),
    /// An import or export has the wrong shape.
    #[error("does not match the world pier:plugin/plugin@0.1.0: {0}")]
    WorldMismatch(String),
    /// Its start-up code (instantiation, or the constructors its first call runs) trapped,
    /// ran past the call deadline or the memory limit.
    #[error("fails in its start-up code: {0}")]
    StartupFailed(String),
}

/// A plugin compiled, linked against the host and checked against the world: instances of it
/// can be created cheaply on any worker.
pub struct LoadedPlugin {
    /// The name it was loaded under (a built-in name or the file's path).
    pub name: Arc<str>,
    /// The first 12 hex digits of the SHA-256 of its bytes; identifies the version in logs.
    pub version: String,
    /// Pre-linked instance template, type-checked against the world once.
    pub pre: PluginPre<HostState>,
    /// Every import the component declares, by name.
    pub imports: Vec<String>,
    /// Every export the component declares, by name.
    pub exports: Vec<String>,
    /// Where the optional exports are, for those the plugin has.
    pub optional: OptionalExports,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
    /// How long compiling (or loading from the cache) took.
    pub load_time: std::time::Duration,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Calls `on-close(id, io-error)` for connections that were open on another node of a
    /// cluster when that node vanished, on a fresh instance in its own store (they have no
    /// worker here). Each call runs under `limits`; a fault ends the rest (they are logged and
    /// skipped), like a fault ends one connection. Blocks: run it on a blocking thread.
    pub fn close_elsewhere(
        &self,
        ctx: Arc<ListenerContext>,
        config: Arc<crate::runtime::PluginConfig>,
        limits: crate::limits::InstanceLimits,
        ids: &[crate::tenant::hub::ConnectionId],
    ) -> Result<(), String> {
        let state = HostState::new(ctx, self.name.clone(), limits.memory, false, config);
        let mut store = wasmtime::Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(super::deadline_ticks(limits.call_deadline));
        let bindings = futures_executor::block_on(self.pre.instantiate_async(&mut store))
            .map_err(|e| format!("cannot instantiate: {e:#}"))?;
        for &id in ids {
            store.data_mut().begin_call(id);
            store.set_epoch_deadline(super::deadline_ticks(limits.call_deadline));
            let call = bindings.pier_plugin_handler().call_on_close(
                &mut store,
                id,
                super::bindings::CloseReason::IoError,
            );
            futures_executor::block_on(call)
                .map_err(|e| format!("on-close of connection {id} failed: {:#}", e.root_cause()))?;
        }
        Ok(())
    }

    /// Imports that are stubbed to trap (WASI interfaces beyond the deny-by-default WASI 0.2
    /// pier links, see `runtime::wasi`).
    pub fn stubbed_imports(&self) -> impl Iterator<Item = &str> {
        self.imports
            .iter()
            .map(String::as_str)
            .filter(|name| !name.starts_with(PACKAGE) && !super::wasi::provides(name))
    }
}

impl Runtime {
    /// Compiles (or loads from the cache), links and checks `bytes` as the plugin `name`.
    pub fn load_plugin(&self, name: &str, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let started = Instant::now();
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        // Byte 4..8 is the version/layer field: 1 for core modules, 0x0001000d-style for components.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(LoadError::NotComponent);
        }
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, from_cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &digest, bytes),
            None => Component::new(&self.engine, bytes)
                .map(|c| (c, false))
                .map_err(anyhow::Error::from),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;

        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if let Some(bad) = imports
            .iter()
            .find(|n| !n.starts_with(PACKAGE) && !n.starts_with("wasi:"))
        {
            return Err(LoadError::UnsupportedImport(bad.clone()));
        }
        if !exports.iter().any(|e| e == HANDLER_EXPORT) {
            let list = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            return Err(LoadError::MissingHandler(list));
        }
        check_handler_shape(&component, &self.engine)?;

        let mut linker = self.linker.clone();
        stub_ungranted_imports(&mut linker, &component, &self.engine)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let pre =
            PluginPre::new(instance_pre).map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let optional = OptionalExports {
            on_timer: optional_export(&component, &exports, TIMER_EXPORT, "on-timer")?,
            on_frames: optional_export(&component, &exports, BATCH_EXPORT, "on-frames")?,
            state: optional_export(&component, &exports, STATE_EXPORT, "snapshot")?.zip(
                optional_export(&component, &exports, STATE_EXPORT, "restore")?,
            ),
        };
        self.trial_instantiate(&pre, &optional)?;
        Ok(Arc::new(LoadedPlugin {
            name: Arc::from(name),
            version: digest[..12].to_string(),
            pre,
            imports,
            exports,
            optional,
            from_cache,
            load_time: started.elapsed(),
        }))
    }
}

impl Runtime {
    /// Instantiates the plugin once in a throwaway store. wasmtime checks the exported
    /// functions' types only when an instance is created, and a guest may trap in its start-up
    /// code; either must refuse the plugin now, not fault every connection later.
    fn trial_instantiate(
        &self,
        pre: &PluginPre<HostState>,
        optional: &OptionalExports,
    ) -> Result<(), LoadError> {
        let ctx = Arc::new(ListenerContext {
            name: Arc::from("check"),
            hub: Arc::new(LocalHub::new(1, 0)),
            faults: Default::default(),
            metrics: crate::ops::metrics::ListenerMetrics::detached(),
            upstreams: Default::default(),
            output: Arc::new(super::output::OutputRate::detached()),
        });
        let mut state = HostState::new(
            ctx,
            Arc::from("check"),
            self.config.memory_limit,
            optional.on_timer.is_some(),
            Arc::default(),
        );
        state.quiet = true;
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(self.deadline_ticks());
        // Instantiation is async because the WASI functions a guest may call from its start-up
        // code are; nothing here waits on I/O, so a plain executor runs it to completion.
        let bindings = match futures_executor::block_on(pre.instantiate_async(&mut store)) {
            Ok(bindings) => bindings,
            Err(err) => {
                // Say which function is wrong when that is the problem; wasmtime's own message
                // does not name it.
                if let Some(detail) = mistyped_handler_function(pre, &mut store) {
                    return Err(LoadError::WorldMismatch(detail));
                }
                if err.downcast_ref::<wasmtime::Trap>().is_some() {
                    return Err(LoadError::StartupFailed(format!("{:#}", err.root_cause())));
                }
                return Err(LoadError::WorldMismatch(format!("{err:#}")));
            }
        };
        // Languages run constructors (Rust statics, a Python interpreter's start-up) on the
        // first call into a component rather than at instantiation. One `on-close` for
        // connection 0 (never a real id) in this isolated store runs them, so a plugin that
        // cannot start is refused now instead of faulting every connection.
        store.data_mut().begin_call(0);
        let first = bindings.pier_plugin_handler().call_on_close(
            &mut store,
            0,
            super::bindings::CloseReason::Shutdown,
        );
        if let Err(err) = futures_executor::block_on(first) {
            let why = if store.data().limiter.hit {
                "memory limit reached".to_string()
            } else {
                format!("{:#}", err.root_cause())
            };
            return Err(LoadError::StartupFailed(why));
        }
        if optional.on_timer.is_some() || optional.on_frames.is_some() || optional.state.is_some() {
            let instance =
                futures_executor::block_on(pre.instance_pre().instantiate_async(&mut store))
                    .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
            let wrong = |what: &str, e: wasmtime::Error| {
                LoadError::WorldMismatch(format!("function `{what}` has the wrong type: {e:#}"))
            };
            if let Some(index) = &optional.on_timer {
                instance
                    .get_typed_func::<(u64, u64), (Option<Vec<u8>>,)>(&mut store, index)
                    .map_err(|e| wrong("timer-handler.on-timer", e))?;
            }
            if let Some(index) = &optional.on_frames {
                instance
                    .get_typed_func::<(u64, &[u8], &[u32]), ((Vec<u8>, Vec<i32>),)>(
                        &mut store, index,
                    )
                    .map_err(|e| wrong("batch-handler.on-frames", e))?;
            }
            if let Some((snapshot, restore)) = &optional.state {
                instance
                    .get_typed_func::<(), (Vec<u8>,)>(&mut store, snapshot)
                    .map_err(|e| wrong("state-handler.snapshot", e))?;
                instance
                    .get_typed_func::<(&[u8],), ()>(&mut store, restore)
                    .map_err(|e| wrong("state-handler.restore", e))?;
            }
        }
        Ok(())
    }
}

/// Defines every import pier does not grant (WASI beyond 0.2's core interfaces, e.g.
/// `wasi:http`) as a function that traps when called, so such a guest still loads and only a
/// call that uses it faults.
///
/// wasmtime's `define_unknown_imports_as_traps` would do this, but it compares interface names
/// exactly: a guest importing `wasi:cli/stdout@0.2.6` would get a trapping stub even though
/// the linker provides the semver-compatible `@0.2.12`.
fn stub_ungranted_imports(
    linker: &mut wasmtime::component::Linker<HostState>,
    component: &Component,
    engine: &wasmtime::Engine,
) -> wasmtime::Result<()> {
    use wasmtime::component::ResourceType;
    let refuse = |name: String| {
        move |_: wasmtime::StoreContextMut<'_, HostState>,
              _: wasmtime::component::types::ComponentFunc,
              _: &[wasmtime::component::Val],
              _: &mut [wasmtime::component::Val]| {
            Err(wasmtime::Error::msg(format!(
                "the plugin called `{name}`, which pier does not grant"
            )))
        }
    };
    for (name, item) in component.component_type().imports(engine) {
        if name.starts_with(PACKAGE) || super::wasi::provides(name) {
            continue;
        }
        match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut stub = linker.instance(name)?;
                for (export, item) in instance.exports(engine) {
                    match item.ty {
                        ComponentItem::ComponentFunc(_) => {
                            stub.func_new(export, refuse(format!("{name}#{export}")))?
                        }
                        ComponentItem::Resource(_) => {
                            stub.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?
                        }
                        _ => {}
                    }
                }
            }
            ComponentItem::ComponentFunc(_) => {
                linker.root().func_new(name, refuse(name.to_string()))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finds `function` in the optional exported interface `interface`, if the plugin exports it.
fn optional_export(
    component: &Component,
    exports: &[String],
    interface: &str,
    function: &str,
) -> Result<Option<ComponentExportIndex>, LoadError> {
    if !exports.iter().any(|e| e == interface) {
        return Ok(None);
    }
    let index = component
        .get_export_index(None, interface)
        .and_then(|iface| component.get_export_index(Some(&iface), function));
    match index {
        Some(index) => Ok(Some(index)),
        None => Err(LoadError::WorldMismatch(format!(
            "`{interface}` lacks {function}"
        ))),
    }
}

/// Finds the first handler function whose type differs from the world's, by fetching each one
/// with its expected signature from a fresh instance.
fn mistyped_handler_function(
    pre: &PluginPre<HostState>,
    store: &mut wasmtime::Store<HostState>,
) -> Option<String> {
    use super::bindings::{CloseReason, Peer, Refusal};
    let instance =
        futures_executor::block_on(pre.instance_pre().instantiate_async(&mut *store)).ok()?;
    let iface = instance.get_export_index(&mut *store, None, HANDLER_EXPORT)?;
    let mut check = |name: &str,
                     result: &dyn Fn(
        &mut wasmtime::Store<HostState>,
        &wasmtime::component::ComponentExportIndex,
    ) -> wasmtime::Result<()>| {
        let index = instance.get_export_index(&mut *store, Some(&iface), name)?;
        result(store, &index)
            .err()
            .map(|e| format!("`{HANDLER_EXPORT}` function `{name}` has the wrong type: {e:#}"))
    };
    check("on-open", &|store, index| {
        instance
            .get_typed_func::<(&Peer,), (Result<Option<Vec<u8>>, Refusal>,)>(store, index)
            .map(drop)
    })
    .or_else(|| {
        check("on-frame", &|store, index| {
            instance
                .get_typed_func::<(u64, &[u8]), (Option<Vec<u8>>,)>(store, index)
                .map(drop)
        })
    })
    .or_else(|| {
        check("on-close", &|store, index| {
            instance
                .get_typed_func::<(u64, CloseReason), ()>(store, index)
                .map(drop)
        })
    })
}

/// Names the missing handler functions, which wasmtime's own type check reports less plainly.
fn check_handler_shape(component: &Component, engine: &wasmtime::Engine) -> Result<(), LoadError> {
    let ty = component.component_type();
    let Some(ComponentItem::ComponentInstance(handler)) =
        ty.get_export(engine, HANDLER_EXPORT).map(|e| e.ty)
    else {
        return Err(LoadError::WorldMismatch(format!(
            "`{HANDLER_EXPORT}` is not an interface instance"
        )));
    };
    let present: Vec<&str> = handler.exports(engine).map(|(n, _)| n).collect();
    let missing: Vec<&str> = ["on-open", "on-frame", "on-close"]
        .into_iter()
        .filter(|f| !present.contains(f))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::WorldMismatch(format!(
            "`{HANDLER_EXPORT}` lacks {}",
            missing.join(", ")
        )))
    }
}
