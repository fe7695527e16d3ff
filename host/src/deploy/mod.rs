//! pier.toml ([`config`], with `${NAME}` substitution from the environment: [`envsubst`]) and
//! turning a [`Config`] into running listeners, and changing them while they serve: config
//! reloads (SIGHUP, `pier reload`), plugin file changes (notify) and hot swaps.
//!
//! Everything that can fail — reading and compiling plugins, checking them, loading TLS
//! certificates, parsing the config — happens before anything changes, on blocking threads away
//! from the workers. A failure is one clear log line and the old version keeps serving. A
//! successful plugin swap publishes the new version in the listener's [`PluginSlot`], and each
//! worker moves to it at its next frame boundary (see `runtime::slot`): connections stay open.
//!
//! Which changes keep connections: a new plugin, new SNI plugins or a new `plugin_config` are
//! swapped in place. Other changes to a listener (address, framing, limits, TLS settings)
//! restart it: the old socket stops accepting, its open connections carry on with the old
//! settings until they close, and a new listener takes new clients. Removed listeners drain.
//!
//! [`PluginSlot`]: crate::runtime::PluginSlot

pub mod config;
pub mod envsubst;
pub mod handover;
pub mod inherit;

use crate::sys::lock;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Mutex, mpsc};
use tracing::{error, info, warn};

use crate::deploy::config::{Config, ListenerSpec, PluginRef};
use crate::net::server::{Server, socket_key};
use crate::net::tls::TlsListener;
use crate::runtime::{LoadedPlugin, Runtime};
use crate::tenant::listener::{Door, ListenerSettings, ListenerShared};
use crate::upstream::{Grants, Pool};

/// How long file events are collected before a reload, so an editor's write-rename-chmod
/// sequence (or a `cargo build` writing the file in pieces) causes one reload.
const WATCH_SETTLE: Duration = Duration::from_millis(200);

/// Runs the listeners of a config and applies changes to them.
pub struct Deployer {
    runtime: Arc<Runtime>,
    server: Arc<Server>,
    /// The config in force; reloads replace it only when applying succeeded.
    current: Mutex<Config>,
    /// Where SIGHUP re-reads the config from (`None`: the command line made it).
    source: Option<PathBuf>,
    /// The upstream pools of the config in force, by name; a reload keeps a pool whose
    /// settings did not change, with its connections.
    pools: std::sync::Mutex<HashMap<String, Arc<Pool>>>,
    /// Listening sockets passed down by the process this one replaces; taken by the first
    /// [`Deployer::start`], which closes what it did not use.
    inherited: std::sync::Mutex<inherit::Inherited>,
    /// The cluster this node's tenants span, if any.
    cluster: std::sync::Mutex<Option<Arc<crate::cluster::Cluster>>>,
    /// Itself, for the hooks a clustered listener calls back through.
    me: std::sync::Weak<Deployer>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Listeners started.
    pub added: Vec<String>,
    /// Listeners removed (their connections drain).
    pub removed: Vec<String>,
    /// Listeners restarted with new socket settings.
    pub restarted: Vec<String>,
    /// Listeners (or `listener/sni-name` routes) now running a new plugin version or config.
    pub swapped: Vec<String>,
}

impl Deployer {
    /// A deployer for `config`; nothing is started until [`Deployer::start`].
    pub fn new(
        runtime: Arc<Runtime>,
        server: Arc<Server>,
        config: Config,
        source: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Deployer {
            runtime,
            server,
            current: Mutex::new(config),
            source,
            pools: Default::default(),
            inherited: Default::default(),
            cluster: Default::default(),
            me: me.clone(),
        })
    }

    /// The component rolled out to listener `name` (`plugin = "cluster:NAME"`), waiting up to
    /// 10 s for NATS.
    async fn deployed(&self, name: &str) -> Result<Vec<u8>> {
        let cluster = lock(&self.cluster)
            .clone()
            .ok_or_else(|| anyhow!("plugin cluster:{name} needs a [cluster] section"))?;
        let mut state = cluster.connection_state();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|up| *up))
            .await
            .map_err(|_| anyhow!("plugin cluster:{name}: NATS unreachable for 10 s"))?
            .map_err(|_| anyhow!("plugin cluster:{name}: the cluster connection closed"))?;
        let pointer = cluster.rollout.pointer(name).await?.ok_or_else(|| {
            anyhow!("plugin cluster:{name}: nothing was deployed yet (pier deploy --cluster ... {name} FILE)")
        })?;
        cluster.rollout.fetch(&pointer.version).await
    }

    /// Makes listener `name` serve the component rolled out to the cluster as `version` (its
    /// SHA-256): fetched, checked against its digest, compiled and checked exactly as a local
    /// reload, then hot-swapped at frame boundaries. The version serving afterwards.
    pub async fn deploy_version(&self, name: &str, version: &str) -> Result<String> {
        let cluster = lock(&self.cluster)
            .clone()
            .ok_or_else(|| anyhow!("this node is not in a cluster"))?;
        let shared = self
            .server
            .listener(name)
            .ok_or_else(|| anyhow!("listener `{name}` is not running here"))?;
        let short = version.get(..12).unwrap_or(version);
        if shared.slot.current().plugin.version == short {
            return Ok(short.to_string());
        }
        let spec = self
            .current
            .lock()
            .await
            .listeners
            .iter()
            .find(|l| l.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("listener `{name}` is not in this node's config"))?;
        let bytes = cluster.rollout.fetch(version).await?;
        let runtime = self.runtime.clone();
        let label = format!("cluster:{name}");
        let plugin = tokio::task::spawn_blocking(move || runtime.load_plugin(&label, &bytes))
            .await
            .context("plugin loader stopped")?
            .map_err(|err| anyhow!("{err}"))?;
        check_grants(&spec, &plugin)?;
        let serving = plugin.version.clone();
        Swap {
            route: None,
            plugin,
            config: spec.plugin_config.clone(),
        }
        .apply(&shared);
        Ok(serving)
    }

    /// This node's cluster name, when its tenants span a cluster.
    pub fn node(&self) -> Option<String> {
        lock(&self.cluster).as_ref().map(|c| c.node.clone())
    }

    /// Makes every listener started from now on one tenant with the same-named listeners of
    /// the other nodes of `cluster`.
    pub fn join_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        *lock(&self.cluster) = Some(cluster);
    }

    /// Makes [`Deployer::start`] accept on these sockets (passed down by `pier upgrade`)
    /// instead of binding the same addresses afresh.
    pub fn inherit(&self, sockets: inherit::Inherited) {
        *lock(&self.inherited) = sockets;
    }

    /// The server the listeners run on.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Starts every listener of the config; the first failure stops start-up. Every plugin,
    /// certificate and address is prepared and bound before any listener starts accepting, so
    /// a failure leaves nothing started (and nothing to drain).
    pub async fn start(&self) -> Result<Vec<(ListenerSpec, SocketAddr)>> {
        let config = self.current.lock().await.clone();
        let pools = self.build_pools(&config)?;
        *lock(&self.pools) = pools.clone();
        // On the command line there is one unnamed listener; in a config, say which failed.
        let named = |spec: &ListenerSpec, err: anyhow::Error| match self.source {
            Some(_) => err.context(format!("listener `{}`", spec.name)),
            None => err,
        };
        let mut ready = Vec::new();
        for spec in &config.listeners {
            let prepared = self
                .prepare(spec, &pools)
                .await
                .map_err(|err| named(spec, err))?;
            ready.push((spec, prepared));
        }
        let mut bound = Vec::new();
        for (spec, prepared) in ready {
            let sockets = self.bind_all(spec).map_err(|err| named(spec, err))?;
            bound.push((spec, prepared, sockets));
        }
        lock(&self.inherited).close_rest();
        let mut started = Vec::new();
        for (spec, prepared, sockets) in bound {
            let addr = self
                .activate(spec, prepared, sockets)
                .map_err(|err| named(spec, err))?;
            started.push((spec.clone(), addr));
        }
        Ok(started)
    }

    /// Re-reads the config file (or, without one, re-reads the plugin files and certificates)
    /// and applies the differences.
    pub async fn reload(&self) -> Result<ReloadReport> {
        let result = self.reread_and_apply().await;
        crate::ops::metrics::config_reload(result.is_ok());
        result
    }

    async fn reread_and_apply(&self) -> Result<ReloadReport> {
        let next = match &self.source {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Config::load(&path))
                    .await
                    .context("config reader stopped")??
            }
            None => self.current.lock().await.clone(),
        };
        self.apply(next).await
    }

    /// Applies `next`: everything is prepared first, so a broken plugin, certificate or file
    /// changes nothing.
    pub async fn apply(&self, next: Config) -> Result<ReloadReport> {
        let mut current = self.current.lock().await;
        if next.server != current.server {
            warn!("[server] settings changed; they take effect at the next restart");
        }
        if next.admin.is_some() && next.admin != current.admin {
            warn!("[admin] address changed; it takes effect at the next restart");
        }
        if next.cluster != current.cluster {
            warn!("[cluster] settings changed; they take effect at the next restart");
        }
        let old: HashMap<&str, &ListenerSpec> = current
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        let mut report = ReloadReport::default();
        // Prepare: build the upstream pools, compile every plugin and load every certificate
        // the new config needs.
        let pools = self.build_pools(&next)?;
        let mut plans = Vec::new();
        for spec in &next.listeners {
            // A listener of the old config that is not running (its start or restart failed,
            // e.g. the address was taken) is started again, whatever changed.
            let running = self.server.listener(&spec.name).is_some();
            let plan = match old.get(spec.name.as_str()) {
                Some(before) if running && before.same_socket_settings(spec) => {
                    match self.prepare_swap(spec).await {
                        Ok(swaps) => Plan::Swap(swaps, grants(spec, &pools)),
                        Err(err) => {
                            crate::ops::metrics::plugin_reload(&spec.name, false);
                            return Err(err);
                        }
                    }
                }
                Some(_) if running => Plan::Restart(self.prepare(spec, &pools).await?),
                _ => Plan::Add(self.prepare(spec, &pools).await?),
            };
            plans.push((spec, plan));
        }
        let keep: HashSet<&str> = next.listeners.iter().map(|l| l.name.as_str()).collect();
        for name in old.keys().filter(|n| !keep.contains(*n)) {
            if self.server.remove(name, true).await.is_some() {
                info!(listener = name, "listener removed; its connections drain");
                report.removed.push(name.to_string());
            }
        }
        for (spec, plan) in plans {
            match plan {
                Plan::Swap(swaps, grants) => {
                    let Some(shared) = self.server.listener(&spec.name) else {
                        continue;
                    };
                    shared.ctx.upstreams.replace(grants.clone());
                    for (_, route) in &shared.routes {
                        route.ctx.upstreams.replace(grants.clone());
                    }
                    let doors = self.server.doors(&spec.name);
                    let door_tls = doors.iter().filter_map(|(_, door)| door.tls.as_ref());
                    for tls in shared.tls.iter().chain(door_tls) {
                        match tls.reload() {
                            Ok(()) => eprintln!("pier: SIGHUP: TLS certificates reloaded"),
                            Err(err) => eprintln!(
                                "pier: SIGHUP: new TLS certificates refused, keeping the old ones: {err:#}"
                            ),
                        }
                    }
                    for swap in swaps {
                        if let Some(label) = swap.apply(&shared) {
                            report.swapped.push(label);
                        }
                    }
                }
                Plan::Restart(prepared) => {
                    self.server.remove(&spec.name, false).await;
                    match self.launch(spec, prepared).await {
                        Ok(_) => report.restarted.push(spec.name.clone()),
                        Err(err) => {
                            error!(listener = %spec.name, "cannot restart the listener: {err:#}")
                        }
                    }
                }
                Plan::Add(prepared) => match self.launch(spec, prepared).await {
                    Ok(_) => report.added.push(spec.name.clone()),
                    Err(err) => error!(listener = %spec.name, "cannot start the listener: {err:#}"),
                },
            }
        }
        let replaced = std::mem::replace(&mut *lock(&self.pools), pools.clone());
        for (name, old) in replaced {
            if !pools.get(&name).is_some_and(|new| Arc::ptr_eq(new, &old)) {
                old.retire();
            }
        }
        *current = next;
        Ok(report)
    }

    /// The pools `config` needs: those of the running config whose settings did not change,
    /// new ones for the rest.
    fn build_pools(&self, config: &Config) -> Result<HashMap<String, Arc<Pool>>> {
        let running = lock(&self.pools).clone();
        let mut pools = HashMap::new();
        for spec in &config.upstreams {
            let pool = match running.get(&spec.name) {
                Some(pool) if pool.serves(spec) => pool.clone(),
                _ => Pool::new(spec.clone())?,
            };
            pools.insert(spec.name.clone(), pool);
        }
        Ok(pools)
    }

    /// Reloads the plugins of every listener that uses one of `files`.
    pub async fn reload_files(&self, files: &HashSet<PathBuf>) -> ReloadReport {
        let specs: Vec<ListenerSpec> = self
            .current
            .lock()
            .await
            .listeners
            .iter()
            .filter(|spec| plugin_files(spec).any(|f| files.contains(f)))
            .cloned()
            .collect();
        let mut report = ReloadReport::default();
        for spec in specs {
            let Some(shared) = self.server.listener(&spec.name) else {
                continue;
            };
            match self.prepare_swap(&spec).await {
                Ok(swaps) => {
                    for swap in swaps {
                        if let Some(label) = swap.apply(&shared) {
                            report.swapped.push(label);
                        }
                    }
                }
                Err(err) => {
                    crate::ops::metrics::plugin_reload(&spec.name, false);
                    error!(
                        listener = %spec.name,
                        "reload refused, the old version keeps serving: {err:#}"
                    )
                }
            }
        }
        report
    }

    /// Every plugin file the config in force uses.
    pub async fn watched_files(&self) -> HashSet<PathBuf> {
        self.current
            .lock()
            .await
            .listeners
            .iter()
            .flat_map(|spec| plugin_files(spec).cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Loads a plugin for listener `spec` on a blocking thread (compiling is CPU work the async
    /// threads must not do), refusing one that asks for more than the listener grants.
    async fn load(&self, spec: &ListenerSpec, plugin: &PluginRef) -> Result<Arc<LoadedPlugin>> {
        let loaded = self.compile(plugin).await?;
        check_grants(spec, &loaded)?;
        Ok(loaded)
    }

    /// Compiles (or loads from the cache) and checks a plugin on a blocking thread.
    async fn compile(&self, plugin: &PluginRef) -> Result<Arc<LoadedPlugin>> {
        if let PluginRef::Cluster(name) = plugin {
            let bytes = self.deployed(name).await?;
            let runtime = self.runtime.clone();
            let label = plugin.to_string();
            return tokio::task::spawn_blocking(move || {
                runtime
                    .load_plugin(&label, &bytes)
                    .map_err(|err| anyhow!("plugin {label}: {err}"))
            })
            .await
            .context("plugin loader stopped")?;
        }
        let runtime = self.runtime.clone();
        let plugin = plugin.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = plugin.read()?;
            runtime
                .load_plugin(&plugin.to_string(), &bytes)
                .map_err(|err| anyhow!("plugin {plugin}: {err}"))
        })
        .await
        .context("plugin loader stopped")?
    }

    /// Loads what a new or restarted listener needs.
    async fn prepare(
        &self,
        spec: &ListenerSpec,
        pools: &HashMap<String, Arc<Pool>>,
    ) -> Result<Prepared> {
        self.check_limits(spec)?;
        let plugin = self.load(spec, &spec.plugin).await?;
        let mut routes = Vec::new();
        for (name, plugin) in &spec.sni_plugins {
            routes.push((name.clone(), self.load(spec, plugin).await?));
        }
        let tls = match &spec.tls {
            Some(options) => Some(TlsListener::load(options.clone())?),
            None => None,
        };
        let mut doors = Vec::new();
        for (i, door) in spec.doors.iter().enumerate() {
            let tls = match &door.tls {
                Some(options) => Some(
                    TlsListener::load(options.clone())
                        .with_context(|| format!("door {}", i + 1))?,
                ),
                None => None,
            };
            doors.push(Door::new(
                door.framing,
                tls,
                door.websocket.clone(),
                door.proxy.clone(),
            ));
        }
        Ok(Prepared {
            plugin,
            routes,
            tls,
            doors,
            grants: grants(spec, pools),
        })
    }

    /// Loads what a hot swap of `spec` needs: its plugins, compared with what runs now.
    async fn prepare_swap(&self, spec: &ListenerSpec) -> Result<Vec<Swap>> {
        let mut swaps = vec![Swap {
            route: None,
            plugin: self.load(spec, &spec.plugin).await?,
            config: spec.plugin_config.clone(),
        }];
        for (name, plugin) in &spec.sni_plugins {
            swaps.push(Swap {
                route: Some(name.clone()),
                plugin: self.load(spec, plugin).await?,
                config: spec.plugin_config.clone(),
            });
        }
        Ok(swaps)
    }

    /// Refuses limits the process cannot honour without a restart.
    fn check_limits(&self, spec: &ListenerSpec) -> Result<()> {
        let pool = self.runtime.config().memory_limit;
        if let Some(limits) = spec.limits.instance
            && limits.memory > pool
        {
            return Err(anyhow!(
                "limits.memory {} is above the instance pool's {} fixed at start-up; restart pier to raise it",
                bytesize::ByteSize(limits.memory as u64),
                bytesize::ByteSize(pool as u64)
            ));
        }
        Ok(())
    }

    /// Binds the listener's address and starts accepting.
    async fn launch(&self, spec: &ListenerSpec, prepared: Prepared) -> Result<SocketAddr> {
        let sockets = self.bind_all(spec)?;
        self.activate(spec, prepared, sockets)
    }

    /// Binds a listener's address and its doors' (all or nothing: a socket bound before a later
    /// one failed is closed again), or takes the sockets a previous process passed down.
    fn bind_all(&self, spec: &ListenerSpec) -> Result<(TcpListener, Vec<TcpListener>)> {
        let mut inherited = lock(&self.inherited);
        let main = take_or_bind(
            &mut inherited,
            &socket_key(&spec.name, None),
            spec.address,
            spec.reuse_port,
        )?;
        let doors = spec
            .doors
            .iter()
            .enumerate()
            .map(|(index, door)| {
                let key = socket_key(&spec.name, Some(index));
                take_or_bind(&mut inherited, &key, door.address, door.reuse_port)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((main, doors))
    }

    /// Starts accepting on a bound socket and says so.
    fn activate(
        &self,
        spec: &ListenerSpec,
        prepared: Prepared,
        (listener, door_sockets): (TcpListener, Vec<TcpListener>),
    ) -> Result<SocketAddr> {
        let settings = |name: String| ListenerSettings {
            name,
            framing: spec.framing,
            max_frame: spec.max_frame,
            limits: spec.limits.clone(),
            plugin_config: spec.plugin_config.clone(),
            upstreams: prepared.grants.clone(),
            websocket: spec.websocket.clone(),
            proxy: spec.proxy.clone(),
            cluster: lock(&self.cluster).clone(),
        };
        let routes = prepared
            .routes
            .into_iter()
            .map(|(sni, plugin)| {
                let tenant = ListenerShared::build(
                    settings(format!("{}/{sni}", spec.name)),
                    plugin,
                    prepared.tls.clone(),
                    Vec::new(),
                );
                (sni, tenant)
            })
            .collect();
        let shared = ListenerShared::build(
            settings(spec.name.clone()),
            prepared.plugin,
            prepared.tls,
            routes,
        );
        if let Some(hub) = &shared.cluster {
            let deployer = self.me.clone();
            let name = spec.name.clone();
            hub.on_deploy(Box::new(move |version| {
                let deployer = deployer.clone();
                let name = name.clone();
                Box::pin(async move {
                    let deployer = deployer.upgrade().ok_or("pier is shutting down")?;
                    deployer
                        .deploy_version(&name, &version)
                        .await
                        .map_err(|err| format!("{err:#}"))
                })
            }));
        }
        let addr = self.server.add(listener, shared.clone())?;
        let plugin = shared.slot.current().plugin.clone();
        let mode = if shared.tls.is_some() { ", TLS" } else { "" };
        let name = match self.source {
            Some(_) => format!("; listener {}", spec.name),
            None => String::new(),
        };
        let node = match self.node() {
            Some(node) => format!(", cluster node {node}"),
            None => String::new(),
        };
        eprintln!(
            "pier: listening on {addr} (plugin {}, framing {}{mode}{node}{name})",
            plugin.name, spec.framing
        );
        for (socket, door) in door_sockets.into_iter().zip(prepared.doors) {
            let mode = if door.tls.is_some() { ", TLS" } else { "" };
            let framing = door.framing;
            let door_addr = self.server.add_door(&spec.name, socket, door)?;
            eprintln!(
                "pier: listening on {door_addr} (plugin {}, framing {framing}{mode}; door of listener {})",
                plugin.name, spec.name
            );
        }
        Ok(addr)
    }
}

/// A listener's plugins, compiled and checked, and its TLS settings, loaded.
struct Prepared {
    plugin: Arc<LoadedPlugin>,
    routes: Vec<(String, Arc<LoadedPlugin>)>,
    tls: Option<Arc<TlsListener>>,
    /// The other doors, in the config's order.
    doors: Vec<Arc<Door>>,
    grants: Grants,
}

/// What a reload does to one listener.
enum Plan {
    Swap(Vec<Swap>, Grants),
    Restart(Prepared),
    Add(Prepared),
}

/// A new plugin version (or config) for a listener or one of its SNI routes.
struct Swap {
    route: Option<String>,
    plugin: Arc<LoadedPlugin>,
    config: crate::runtime::PluginConfig,
}

impl Swap {
    /// Publishes the new version unless the same version and config already serve; returns the
    /// listener (or `listener/route`) that changed.
    fn apply(self, shared: &Arc<ListenerShared>) -> Option<String> {
        let target = match &self.route {
            None => shared.clone(),
            Some(name) => shared
                .routes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, l)| l.clone())?,
        };
        let current = target.slot.current();
        if current.plugin.version == self.plugin.version && *current.config == self.config {
            return None;
        }
        let started = Instant::now();
        let generation = target.slot.swap(self.plugin.clone(), self.config);
        crate::ops::metrics::plugin_reload(&target.name, true);
        info!(
            listener = %target.name,
            from = %format!("{}@{}", current.plugin.name, current.plugin.version),
            to = %format!("{}@{}", self.plugin.name, self.plugin.version),
            generation,
            compiled_in = ?self.plugin.load_time,
            cached = self.plugin.from_cache,
            "plugin reloaded; workers switch at their next frame boundary (published in {:?})",
            started.elapsed()
        );
        Some(target.name.to_string())
    }
}

/// Refuses a plugin that imports a capability the listener does not grant, naming each one.
/// Every listener grants the `pier:plugin` interfaces and deny-by-default WASI 0.2;
/// `pier:plugin/upstream` only when it grants at least one upstream; anything else
/// (`wasi:http`, `wasi:keyvalue`, ...) is not granted.
fn check_grants(spec: &ListenerSpec, plugin: &LoadedPlugin) -> Result<()> {
    let listener = &spec.name;
    if spec.upstreams.is_empty()
        && let Some(import) = plugin
            .imports
            .iter()
            .find(|i| i.starts_with("pier:plugin/upstream"))
    {
        return Err(anyhow!(
            "plugin {} imports {import}, but listener `{listener}` grants no upstreams \
             (grant some with `upstreams = [\"NAME\"]` and an [[upstream]] section)",
            plugin.name
        ));
    }
    let missing: Vec<&str> = plugin.stubbed_imports().collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "plugin {} asks for what listener `{listener}` does not grant: {} (a listener grants \
         pier:plugin/* and WASI 0.2 without files, environment or sockets)",
        plugin.name,
        missing.join(", ")
    ))
}

/// The pools `spec` grants, in its `upstreams` order (the config check made sure each exists).
fn grants(spec: &ListenerSpec, pools: &HashMap<String, Arc<Pool>>) -> Grants {
    spec.upstreams
        .iter()
        .filter_map(|name| Some((name.clone(), pools.get(name)?.clone())))
        .collect()
}

fn plugin_files(spec: &ListenerSpec) -> impl Iterator<Item = &PathBuf> {
    std::iter::once(&spec.plugin)
        .chain(spec.sni_plugins.iter().map(|(_, p)| p))
        .filter_map(|p| match p {
            PluginRef::File(path) => Some(path),
            PluginRef::Builtin(_) | PluginRef::Cluster(_) => None,
        })
}

/// The inherited socket `key` when it listens on `addr`, else a socket bound now.
pub fn take_or_bind(
    inherited: &mut inherit::Inherited,
    key: &str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener> {
    match inherited.take(key, addr)? {
        Some(listener) => Ok(listener),
        None => bind(addr, reuse_port),
    }
}

/// Binds a listening socket on `addr` (with `SO_REUSEADDR`, as tokio does, so a restarted pier
/// can bind while old connections linger in TIME_WAIT), with `SO_REUSEPORT` when `reuse_port`
/// so other processes may bind the same address. Errors name the address and what to do.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener> {
    let explain = |err: std::io::Error| match err.kind() {
        std::io::ErrorKind::AddrInUse if reuse_port => anyhow!(
            "address {addr} is already in use by a socket without reuse_port (every process on it must set it)"
        ),
        std::io::ErrorKind::AddrInUse => anyhow!("address {addr} is already in use"),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("permission denied binding {addr} (ports below 1024 need privileges)")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            anyhow!("address {addr} is not available on this machine")
        }
        _ => anyhow!("cannot listen on {addr}: {err}"),
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(explain)?;
    socket.set_reuseaddr(true).map_err(explain)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(explain)?;
    }
    socket.bind(addr).map_err(explain)?;
    socket.listen(LISTEN_BACKLOG).map_err(explain)
}

/// Pending connections the kernel queues per listening socket (tokio's own default).
const LISTEN_BACKLOG: u32 = 1024;

/// Reloads on SIGHUP until the process ends.
pub async fn reload_on_sighup(deployer: Arc<Deployer>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        log_report("SIGHUP", deployer.reload().await);
    }
}

/// Logs what a reload did, or why it was refused.
pub fn log_report(trigger: &str, result: Result<ReloadReport>) {
    match result {
        Ok(report) => info!(
            added = ?report.added,
            removed = ?report.removed,
            restarted = ?report.restarted,
            swapped = ?report.swapped,
            "{trigger}: reload done"
        ),
        Err(err) => error!("{trigger}: reload refused, nothing changed: {err:#}"),
    }
}

/// Watches the plugin files in use and reloads the listeners whose file changed. Watches the
/// files' folders, not the files: editors and build tools replace a file by renaming a new one
/// over it, which ends a watch on the file itself.
pub async fn watch_plugins(deployer: Arc<Deployer>) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && !event.kind.is_access()
            {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        }) {
            Ok(w) => w,
            Err(err) => {
                error!("cannot watch plugin files: {err}");
                return;
            }
        };
    let mut watched_dirs = HashSet::new();
    loop {
        let files = deployer.watched_files().await;
        for dir in files.iter().filter_map(|f| f.parent()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if watched_dirs.insert(dir.to_path_buf()) {
                match watcher.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => info!("watching {} for plugin changes", dir.display()),
                    Err(err) => warn!("cannot watch {}: {err}", dir.display()),
                }
            }
        }
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut changed = HashSet::from([first]);
        let settle = tokio::time::sleep(WATCH_SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                Some(path) = rx.recv() => { changed.insert(path); }
            }
        }
        let hits: HashSet<PathBuf> = files
            .into_iter()
            .filter(|f| changed.iter().any(|c| same_file(c, f)))
            .collect();
        if !hits.is_empty() {
            let report = deployer.reload_files(&hits).await;
            if !report.swapped.is_empty() {
                info!(swapped = ?report.swapped, "plugin file changed: reloaded");
            }
        }
    }
}

/// Whether an event path names a watched file (events carry absolute paths; configs may not).
fn same_file(event: &Path, watched: &Path) -> bool {
    if event == watched {
        return true;
    }
    match (event.canonicalize(), watched.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => std::path::absolute(watched).is_ok_and(|w| w == event),
    }
}
