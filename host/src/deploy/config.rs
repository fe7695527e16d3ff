//! `pier.toml`: parsing, validation and plugin references.
//!
//! Everything is checked before anything binds: unknown keys are refused naming the key (serde's
//! `deny_unknown_fields`, with the line from the TOML parser), and every value — addresses,
//! sizes, durations, plugin names and files, TLS files, uniqueness of names and addresses — is
//! validated into a [`Config`] whose fields need no further checking. A reload validates the new
//! file the same way and changes nothing if it fails.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::builtin;
use crate::limits::{DEFAULT_WRITE_QUEUE, InstanceLimits, Limits, SlowConsumer};
use crate::net::framing::Framing;
use crate::net::proxy::ProxySettings;
use crate::net::tls::{SniCert, TlsOptions};
use crate::net::upgrade::WebSocketSettings;
use crate::runtime::PluginConfig;
use crate::upstream::{UpstreamSpec, UpstreamTls};

/// Defaults that apply when pier.toml does not say.
pub mod defaults {
    use std::time::Duration;

    /// `max_frame`.
    pub const MAX_FRAME: usize = 1024 * 1024;
    /// `limits.memory`.
    pub const MEMORY: usize = 64 * 1024 * 1024;
    /// `limits.call_deadline`.
    pub const CALL_DEADLINE: Duration = Duration::from_secs(1);
    /// `tls.handshake_timeout`.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `server.drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// `upstream.max_size`.
    pub const UPSTREAM_MAX_SIZE: usize = 10;
    /// The largest `upstream.max_size` accepted.
    pub const UPSTREAM_MAX_SIZE_LIMIT: usize = 10_000;
    /// `upstream.idle_timeout`.
    pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// `upstream.connect_timeout`.
    pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// `upstream.request_timeout`.
    pub const UPSTREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
}

/// A validated pier.toml.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (relative plugin and TLS paths are resolved against its folder).
    pub path: PathBuf,
    /// Process-wide settings.
    pub server: ServerSection,
    /// `[admin] address`: where the admin endpoint listens (off when `None`).
    pub admin: Option<SocketAddr>,
    /// The `[[upstream]]`s, in file order.
    pub upstreams: Vec<UpstreamSpec>,
    /// The listeners (tenants), in file order.
    pub listeners: Vec<ListenerSpec>,
    /// `[cluster]`: the NATS servers joining this node's tenants to other nodes' (none: every
    /// tenant is this process's alone). Changing it needs a restart.
    pub cluster: Option<crate::cluster::ClusterSpec>,
}

/// `[server]`: process-wide settings. Changing them needs a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSection {
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// How long shutdown waits for connections to flush.
    pub drain_timeout: Duration,
    /// Compiled-plugin cache folder (default: the user cache dir).
    pub cache_dir: Option<PathBuf>,
    /// Reload plugins when their files change (default: on).
    pub watch: bool,
}

/// A plugin named in a config or on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PluginRef {
    /// A plugin embedded in the binary.
    Builtin(String),
    /// A component file.
    File(PathBuf),
    /// `cluster:NAME`: whatever version `pier deploy --cluster` rolled out to listener NAME,
    /// fetched from the cluster when the listener starts.
    Cluster(String),
}

/// One `[[listener]]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSpec {
    /// Unique name, on log lines and metrics.
    pub name: String,
    /// Where to listen.
    pub address: SocketAddr,
    /// Bind with `SO_REUSEPORT`, so several processes (or an old and a new pier) accept on the
    /// same address and the kernel spreads connections over them.
    pub reuse_port: bool,
    /// The plugin serving it.
    pub plugin: PluginRef,
    /// How frames are cut.
    pub framing: Framing,
    /// Largest frame a client may send.
    pub max_frame: usize,
    /// Upstreams the plugin may use.
    pub upstreams: Vec<String>,
    /// TLS settings, when the listener does TLS.
    pub tls: Option<TlsOptions>,
    /// SNI names served by another plugin than `plugin`.
    pub sni_plugins: Vec<(String, PluginRef)>,
    /// Connection and instance limits.
    pub limits: Limits,
    /// Free keys and values for the plugin.
    pub plugin_config: PluginConfig,
    /// The upgrade settings when `framing` is WebSocket (`[listener.websocket]`).
    pub websocket: Option<WebSocketSettings>,
    /// Other addresses of the same tenant (`[[listener.door]]`).
    pub doors: Vec<DoorSpec>,
    /// The PROXY protocol on the listener's address (`proxy_protocol`, `proxy_from`).
    pub proxy: Option<ProxySettings>,
}

/// Another address of a listener's tenant, with its own framing and TLS
/// (`[[listener.door]]`): e.g. the chat room for line clients on one port and for browsers,
/// over WebSocket, on another.
#[derive(Clone, Debug, PartialEq)]
pub struct DoorSpec {
    /// Where to listen.
    pub address: SocketAddr,
    /// Bind with `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// How frames are cut on this door.
    pub framing: Framing,
    /// TLS on this door (its own `[listener.door.tls]`; SNI routes belong to the listener).
    pub tls: Option<TlsOptions>,
    /// The upgrade settings when `framing` is WebSocket.
    pub websocket: Option<WebSocketSettings>,
    /// The PROXY protocol on this door.
    pub proxy: Option<ProxySettings>,
}

impl ListenerSpec {
    /// Whether `other` differs only in what a hot swap can change (plugin, SNI plugins and
    /// `plugin_config`), so the listener can keep its socket and connections.
    pub fn same_socket_settings(&self, other: &ListenerSpec) -> bool {
        self.address == other.address
            && self.reuse_port == other.reuse_port
            && self.framing == other.framing
            && self.max_frame == other.max_frame
            && self.upstreams == other.upstreams
            && self.tls == other.tls
            && self.limits == other.limits
            && self.websocket == other.websocket
            && self.doors == other.doors
            && self.proxy == other.proxy
            && self
                .sni_plugins
                .iter()
                .map(|(n, _)| n)
                .eq(other.sni_plugins.iter().map(|(n, _)| n))
    }
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginRef::Builtin(name) => f.write_str(name),
            PluginRef::File(path) => write!(f, "{}", path.display()),
            PluginRef::Cluster(name) => write!(f, "cluster:{name}"),
        }
    }
}

impl PluginRef {
    /// Resolves a command-line or config plugin argument: a built-in name, or a file (relative
    /// paths against `base`). The file must exist.
    pub fn parse(arg: &str, base: &Path) -> Result<PluginRef> {
        if let Some(name) = arg.strip_prefix("cluster:") {
            if name.is_empty() {
                bail!(
                    "`cluster:` names no listener (cluster:NAME serves what was deployed to NAME)"
                );
            }
            return Ok(PluginRef::Cluster(name.to_string()));
        }
        let looks_like_path = arg.ends_with(".wasm") || arg.contains('/');
        if !looks_like_path && builtin::find(arg).is_some() {
            return Ok(PluginRef::Builtin(arg.to_string()));
        }
        let path = base.join(arg);
        if !path.exists() {
            if looks_like_path {
                bail!("plugin file {} does not exist", path.display());
            }
            bail!(
                "no plugin file or built-in plugin named `{arg}` (built-in plugins: {})",
                builtin::names()
            );
        }
        Ok(PluginRef::File(path))
    }

    /// The framing the plugin is meant for, for built-ins.
    pub fn preferred_framing(&self) -> Option<Framing> {
        match self {
            PluginRef::Builtin(name) => builtin::find(name).map(|b| b.framing),
            PluginRef::File(_) | PluginRef::Cluster(_) => None,
        }
    }

    /// The component's bytes.
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            PluginRef::Builtin(name) => builtin::find(name)
                .map(|b| b.wasm.to_vec())
                .ok_or_else(|| anyhow!("no built-in plugin named `{name}`")),
            PluginRef::File(path) => std::fs::read(path)
                .with_context(|| format!("cannot read plugin file {}", path.display())),
            PluginRef::Cluster(name) => {
                bail!("plugin cluster:{name} comes from the cluster, not from a file")
            }
        }
    }

    /// The file to watch for changes, for file plugins.
    pub fn file(&self) -> Option<&Path> {
        match self {
            PluginRef::File(path) => Some(path),
            PluginRef::Builtin(_) | PluginRef::Cluster(_) => None,
        }
    }
}

/// Parses `1048576`, `64KiB`, `1MiB`, `1 MB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a size ({e})"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("`{s}` is too large"))
}

/// Parses `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration ({e})"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    nats: Vec<String>,
    node: Option<String>,
    credentials: Option<PathBuf>,
    token_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    subject_prefix: Option<String>,
    tls: Option<RawClusterTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// `[cluster]`, with files relative to the config's folder.
fn cluster(raw: RawCluster, base: &Path) -> Result<crate::cluster::ClusterSpec> {
    use crate::cluster::{ClusterAuth, ClusterSpec, ClusterTls};
    let auth = match (raw.credentials, raw.token_file, raw.user, raw.password_file) {
        (None, None, None, None) => ClusterAuth::None,
        (Some(creds), None, None, None) => ClusterAuth::Credentials(base.join(creds)),
        (None, Some(token), None, None) => ClusterAuth::TokenFile(base.join(token)),
        (None, None, Some(user), Some(password)) => ClusterAuth::UserPassword {
            user,
            password_file: base.join(password),
        },
        (None, None, Some(_), None) | (None, None, None, Some(_)) => {
            bail!("`user` and `password_file` go together")
        }
        _ => bail!("give one of `credentials`, `token_file`, or `user` with `password_file`"),
    };
    let tls = match raw.tls {
        None => None,
        Some(tls) => Some(ClusterTls {
            ca: tls.ca.map(|ca| base.join(ca)),
            cert: match (tls.cert, tls.key) {
                (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
                (None, None) => None,
                _ => bail!("tls: `cert` and `key` go together"),
            },
        }),
    };
    let spec = ClusterSpec {
        servers: raw.nats,
        node: raw.node.unwrap_or_else(crate::cluster::default_node_name),
        subject_prefix: raw.subject_prefix.unwrap_or_else(|| "pier".into()),
        auth,
        tls,
    };
    spec.check()?;
    Ok(spec)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    addresses: Vec<String>,
    framing: Option<String>,
    max_frame: Option<RawSize>,
    max_size: Option<usize>,
    idle_timeout: Option<RawDuration>,
    connect_timeout: Option<RawDuration>,
    request_timeout: Option<RawDuration>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    verify: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    workers: Option<usize>,
    drain_timeout: Option<RawDuration>,
    cache_dir: Option<PathBuf>,
    watch: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    address: String,
    #[serde(default)]
    reuse_port: bool,
    plugin: String,
    framing: Option<String>,
    max_frame: Option<RawSize>,
    #[serde(default)]
    upstreams: Vec<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    plugin_config: toml::Table,
    websocket: Option<RawWebSocket>,
    #[serde(default)]
    door: Vec<RawDoor>,
    proxy_protocol: Option<String>,
    #[serde(default)]
    proxy_from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoor {
    address: String,
    #[serde(default)]
    reuse_port: bool,
    framing: String,
    tls: Option<RawTls>,
    websocket: Option<RawWebSocket>,
    proxy_protocol: Option<String>,
    #[serde(default)]
    proxy_from: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebSocket {
    path: Option<String>,
    #[serde(default)]
    protocols: Vec<String>,
    #[serde(default)]
    origins: Vec<String>,
    replies: Option<String>,
    static_dir: Option<PathBuf>,
    handshake_timeout: Option<RawDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_cert_optional: bool,
    #[serde(default)]
    alpn: Vec<String>,
    handshake_timeout: Option<RawDuration>,
    #[serde(default)]
    sni: Vec<RawSni>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSni {
    name: String,
    cert: PathBuf,
    key: PathBuf,
    plugin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    new_connections_per_second: Option<u32>,
    memory: Option<RawSize>,
    call_deadline: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    frame_timeout: Option<RawDuration>,
    write_queue: Option<usize>,
    write_queue_bytes: Option<RawSize>,
    slow_consumer: Option<String>,
    queued_bytes: Option<RawSize>,
    partial_frame_bytes: Option<RawSize>,
    attribute_bytes: Option<RawSize>,
    group_bytes: Option<RawSize>,
    timers: Option<usize>,
    cpu_share: Option<toml::Value>,
}

/// A duration, written as text with a unit (`"500ms"`, `"10s"`). A bare number is refused
/// with an example, since its unit would be a guess.
struct RawDuration(String);

impl std::ops::Deref for RawDuration {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"500ms\" or \"10s\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(text.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RawDuration, E> {
                Err(bare_number(n, &format!("\"{n}ms\" or \"{n}s\"")))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RawDuration, E> {
                Err(bare_number(n, &format!("\"{n}ms\" or \"{n}s\"")))
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<RawDuration, E> {
                // humantime takes whole numbers only.
                Err(bare_number(n, "\"500ms\" or \"2s\""))
            }
        }

        fn bare_number<E: serde::de::Error>(n: impl std::fmt::Display, examples: &str) -> E {
            E::custom(format!(
                "expected a duration such as {examples}, not the bare number {n}"
            ))
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// A size written as a number of bytes or as text (`"1MiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    fn bytes(&self) -> Result<usize, String> {
        match self {
            RawSize::Bytes(n) => usize::try_from(*n).map_err(|_| format!("{n} is too large")),
            RawSize::Text(s) => parse_size(s),
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path).with_context(|| format!("config file {}", path.display()))
    }

    /// Validates `text` as if read from `path`, after expanding `${NAME}` and
    /// `${NAME:-default}` from the environment ([`crate::deploy::envsubst`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let text = crate::deploy::envsubst::expand(text)?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| toml_error(&text, &e))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let server = ServerSection {
            workers: match raw.server.workers {
                Some(0) => bail!("server.workers: must be at least 1"),
                w => w,
            },
            drain_timeout: opt_duration(
                raw.server.drain_timeout.as_deref(),
                "server.drain_timeout",
            )?
            .unwrap_or(defaults::DRAIN_TIMEOUT),
            cache_dir: raw.server.cache_dir.map(|d| base.join(d)),
            watch: raw.server.watch.unwrap_or(true),
        };
        if raw.listener.is_empty() {
            bail!("no [[listener]] sections: nothing to serve");
        }
        let mut upstreams: Vec<UpstreamSpec> = Vec::new();
        for raw in raw.upstream {
            let name = raw.name.clone();
            let spec = upstream(raw, &base).with_context(|| format!("upstream `{name}`"))?;
            if upstreams.iter().any(|u| u.name == spec.name) {
                bail!("upstream `{}` is defined twice", spec.name);
            }
            upstreams.push(spec);
        }
        let defined: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut listeners = Vec::new();
        for raw in raw.listener {
            let name = raw.name.clone();
            let spec =
                listener(raw, &base, &defined).with_context(|| format!("listener `{name}`"))?;
            if !names.insert(spec.name.clone()) {
                bail!("listener `{}` is defined twice", spec.name);
            }
            let doors = spec.doors.iter().map(|d| d.address);
            for address in std::iter::once(spec.address).chain(doors) {
                if address.port() != 0 && !addresses.insert(address) {
                    bail!(
                        "listener `{}`: address {address} is used by another listener or door",
                        spec.name,
                    );
                }
            }
            listeners.push(spec);
        }
        let admin = match raw.admin.address {
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| anyhow!("admin.address: `{text}` is not IP:PORT ({e})"))?,
            ),
            None => None,
        };
        let cluster = match raw.cluster {
            Some(raw) => Some(cluster(raw, &base).context("cluster")?),
            None => None,
        };
        Ok(Config {
            path: path.to_path_buf(),
            server,
            admin,
            listeners,
            upstreams,
            cluster,
        })
    }

    /// The largest memory limit any listener asks for: the size of the instance pool's slots.
    pub fn largest_memory(&self) -> usize {
        self.listeners
            .iter()
            .filter_map(|l| l.limits.instance.map(|i| i.memory))
            .max()
            .unwrap_or(defaults::MEMORY)
    }
}

fn listener(raw: RawListener, base: &Path, defined: &HashSet<&str>) -> Result<ListenerSpec> {
    valid_name(&raw.name)?;
    let address = resolve_address(&raw.address).context("address")?;
    let plugin = PluginRef::parse(&raw.plugin, base).context("plugin")?;
    let framing = match raw.framing.as_deref() {
        Some(f) => f.parse().map_err(|e: String| anyhow!("framing: {e}"))?,
        None => plugin.preferred_framing().unwrap_or(Framing::Raw),
    };
    let max_frame = match &raw.max_frame {
        Some(s) => s.bytes().map_err(|e| anyhow!("max_frame: {e}"))?,
        None => defaults::MAX_FRAME,
    };
    if max_frame == 0 {
        bail!("max_frame: must be at least 1 byte");
    }
    if let Some(unknown) = raw.upstreams.iter().find(|u| !defined.contains(u.as_str())) {
        bail!("upstreams: no upstream named `{unknown}` is defined");
    }
    if let Some(twice) = raw
        .upstreams
        .iter()
        .enumerate()
        .find(|(i, u)| raw.upstreams[..*i].contains(u))
        .map(|(_, u)| u)
    {
        bail!("upstreams: `{twice}` is granted twice");
    }
    let limits = limits(&raw.limits)?;
    let (tls, sni_plugins) = match raw.tls {
        Some(tls) => {
            let (options, routes) = tls_options(tls, base)?;
            (Some(options), routes)
        }
        None => (None, Vec::new()),
    };
    let plugin_config: BTreeMap<String, String> = raw
        .plugin_config
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let websocket = websocket_settings(framing, raw.websocket, base, "websocket")?;
    let proxy = proxy_settings(
        raw.proxy_protocol.as_deref(),
        &raw.proxy_from,
        tls.as_ref().map(|t| t.handshake_timeout),
    )?;
    let doors = raw
        .door
        .into_iter()
        .enumerate()
        .map(|(i, door)| door_spec(door, base).with_context(|| format!("door {}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(ListenerSpec {
        name: raw.name,
        address,
        reuse_port: raw.reuse_port,
        plugin,
        framing,
        max_frame,
        upstreams: raw.upstreams,
        tls,
        sni_plugins,
        limits,
        plugin_config,
        websocket,
        doors,
        proxy,
    })
}

fn door_spec(raw: RawDoor, base: &Path) -> Result<DoorSpec> {
    let address = resolve_address(&raw.address).context("address")?;
    let framing: Framing = raw
        .framing
        .parse()
        .map_err(|e: String| anyhow!("framing: {e}"))?;
    let tls = match raw.tls {
        Some(tls) => {
            let (options, routes) = tls_options(tls, base)?;
            if !routes.is_empty() {
                bail!("tls.sni: a door cannot route to other plugins (the listener's own tls can)");
            }
            Some(options)
        }
        None => None,
    };
    Ok(DoorSpec {
        address,
        reuse_port: raw.reuse_port,
        websocket: websocket_settings(framing, raw.websocket, base, "websocket")?,
        proxy: proxy_settings(
            raw.proxy_protocol.as_deref(),
            &raw.proxy_from,
            tls.as_ref().map(|t| t.handshake_timeout),
        )?,
        framing,
        tls,
    })
}

/// `proxy_protocol` and `proxy_from` of a listener or door. The header must arrive within the
/// TLS handshake timeout on a TLS socket, else within 10 s.
pub fn proxy_settings(
    protocol: Option<&str>,
    from: &[String],
    tls_timeout: Option<Duration>,
) -> Result<Option<ProxySettings>> {
    let Some(protocol) = protocol else {
        if !from.is_empty() {
            bail!("proxy_from: only with proxy_protocol");
        }
        return Ok(None);
    };
    let version = protocol
        .parse()
        .map_err(|e: String| anyhow!("proxy_protocol: {e}"))?;
    if from.is_empty() {
        bail!(
            "proxy_protocol needs proxy_from: the load balancers allowed to send the header, e.g. [\"10.0.0.0/8\"]"
        );
    }
    let from = from
        .iter()
        .map(|text| parse_net(text).map_err(|e| anyhow!("proxy_from: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(ProxySettings {
        version,
        from,
        timeout: tls_timeout.unwrap_or(crate::net::proxy::DEFAULT_TIMEOUT),
    }))
}

/// A network (`10.0.0.0/8`) or one address (`127.0.0.1`, `::1`).
pub fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a network like 10.0.0.0/8"))
}

/// The `[websocket]` table of a listener or door: only with WebSocket framing, where it is
/// optional (the defaults apply).
fn websocket_settings(
    framing: Framing,
    raw: Option<RawWebSocket>,
    base: &Path,
    key: &str,
) -> Result<Option<WebSocketSettings>> {
    if framing != Framing::WebSocket {
        if raw.is_some() {
            bail!("{key}: only for framing = \"websocket\"");
        }
        return Ok(None);
    }
    let Some(raw) = raw else {
        return Ok(Some(WebSocketSettings::default()));
    };
    let defaults = WebSocketSettings::default();
    let static_dir = match raw.static_dir {
        Some(dir) => {
            let dir = base.join(dir);
            if !dir.is_dir() {
                bail!("{key}.static_dir: {} is not a folder", dir.display());
            }
            Some(dir)
        }
        None => None,
    };
    let settings = WebSocketSettings {
        path: raw.path.unwrap_or(defaults.path),
        protocols: raw.protocols,
        origins: raw.origins,
        replies: match raw.replies.as_deref() {
            Some(text) => text
                .parse()
                .map_err(|e: String| anyhow!("{key}.replies: {e}"))?,
            None => defaults.replies,
        },
        static_dir,
        handshake_timeout: opt_duration(
            raw.handshake_timeout.as_deref(),
            &format!("{key}.handshake_timeout"),
        )?
        .unwrap_or(defaults.handshake_timeout),
    };
    settings.check().map_err(|e| anyhow!("{e}"))?;
    Ok(Some(settings))
}

fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("name: use letters, digits, `-`, `_` and `.` only");
    }
    Ok(())
}

fn upstream(raw: RawUpstream, base: &Path) -> Result<UpstreamSpec> {
    valid_name(&raw.name)?;
    if raw.addresses.is_empty() {
        bail!("addresses: list at least one host:port");
    }
    for address in &raw.addresses {
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => bail!("addresses: `{address}` is not host:port"),
        }
    }
    let framing: Framing = match raw.framing.as_deref() {
        Some(f) => f.parse().map_err(|e: String| anyhow!("framing: {e}"))?,
        None => Framing::Lines,
    };
    if matches!(framing, Framing::Http | Framing::WebSocket) {
        bail!("framing: upstreams use raw, lines or length-prefixed");
    }
    let max_frame = match &raw.max_frame {
        Some(s) => s.bytes().map_err(|e| anyhow!("max_frame: {e}"))?,
        None => defaults::MAX_FRAME,
    };
    if max_frame == 0 {
        bail!("max_frame: must be at least 1 byte");
    }
    let max_size = match raw.max_size {
        Some(0) => bail!("max_size: must be at least 1"),
        Some(n) if n > defaults::UPSTREAM_MAX_SIZE_LIMIT => bail!(
            "max_size: at most {} connections per address",
            defaults::UPSTREAM_MAX_SIZE_LIMIT
        ),
        Some(n) => n,
        None => defaults::UPSTREAM_MAX_SIZE,
    };
    let duration = |text: Option<&str>, key: &str, default: Duration| -> Result<Duration> {
        match opt_duration(text, key)? {
            Some(d) if d.is_zero() => bail!("{key}: must be more than zero"),
            Some(d) => Ok(d),
            None => Ok(default),
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(tls) => {
            let verify = tls.verify.unwrap_or(true);
            if verify && tls.ca.is_none() {
                bail!("tls.ca: needed to verify the upstream (or set tls.verify = false)");
            }
            if tls.cert.is_some() != tls.key.is_some() {
                bail!("tls: cert and key go together");
            }
            Some(UpstreamTls {
                ca: tls.ca.map(|p| base.join(p)),
                cert: tls.cert.map(|p| base.join(p)),
                key: tls.key.map(|p| base.join(p)),
                server_name: tls.server_name,
                verify,
            })
        }
    };
    Ok(UpstreamSpec {
        name: raw.name,
        addresses: raw.addresses,
        framing,
        max_frame,
        max_size,
        idle_timeout: duration(
            raw.idle_timeout.as_deref(),
            "idle_timeout",
            defaults::UPSTREAM_IDLE_TIMEOUT,
        )?,
        connect_timeout: duration(
            raw.connect_timeout.as_deref(),
            "connect_timeout",
            defaults::UPSTREAM_CONNECT_TIMEOUT,
        )?,
        request_timeout: duration(
            raw.request_timeout.as_deref(),
            "request_timeout",
            defaults::UPSTREAM_REQUEST_TIMEOUT,
        )?,
        tls,
    })
}

fn resolve_address(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| anyhow!("`{text}` is not a host:port address ({e})"))?
        .next()
        .ok_or_else(|| anyhow!("`{text}` resolves to no address"))
}

fn limits(raw: &RawLimits) -> Result<Limits> {
    let positive = |v: Option<usize>, key: &str| match v {
        Some(0) => Err(anyhow!("limits.{key}: must be at least 1")),
        v => Ok(v),
    };
    let memory = match &raw.memory {
        Some(s) => s.bytes().map_err(|e| anyhow!("limits.memory: {e}"))?,
        None => defaults::MEMORY,
    };
    if memory < 1024 * 1024 {
        bail!("limits.memory: at least 1MiB is needed to run a component");
    }
    let call_deadline = opt_duration(raw.call_deadline.as_deref(), "limits.call_deadline")?
        .unwrap_or(defaults::CALL_DEADLINE);
    if call_deadline.is_zero() {
        bail!("limits.call_deadline: must be more than zero");
    }
    let idle_timeout = switchable_duration(
        raw.idle_timeout.as_deref(),
        "limits.idle_timeout",
        Some(crate::limits::DEFAULT_IDLE_TIMEOUT),
    )?;
    let frame_timeout = switchable_duration(
        raw.frame_timeout.as_deref(),
        "limits.frame_timeout",
        Some(crate::limits::DEFAULT_FRAME_TIMEOUT),
    )?;
    let size = |raw: &Option<RawSize>, key: &str, default: usize| -> Result<usize> {
        match raw {
            None => Ok(default),
            Some(s) => match s.bytes().map_err(|e| anyhow!("limits.{key}: {e}"))? {
                0 => bail!("limits.{key}: must be at least 1 byte"),
                n => Ok(n),
            },
        }
    };
    let budget = crate::limits::BudgetLimits::default();
    let budgets = crate::limits::BudgetLimits {
        queued_bytes: size(&raw.queued_bytes, "queued_bytes", budget.queued_bytes)?,
        partial_frame_bytes: size(
            &raw.partial_frame_bytes,
            "partial_frame_bytes",
            budget.partial_frame_bytes,
        )?,
        attribute_bytes: size(
            &raw.attribute_bytes,
            "attribute_bytes",
            budget.attribute_bytes,
        )?,
        group_bytes: size(&raw.group_bytes, "group_bytes", budget.group_bytes)?,
        timers: positive(raw.timers, "timers")?.unwrap_or(budget.timers),
    };
    if raw.new_connections_per_second == Some(0) {
        bail!("limits.new_connections_per_second: must be at least 1");
    }
    let cpu_share = match &raw.cpu_share {
        None => crate::limits::DEFAULT_CPU_SHARE,
        Some(value) => percent(value).map_err(|e| anyhow!("limits.cpu_share: {e}"))?,
    };
    Ok(Limits {
        max_connections: positive(raw.max_connections, "max_connections")?.unwrap_or(10_000),
        // 0 lifts the limit; left out, the default applies.
        max_connections_per_address: match raw.max_connections_per_address {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(crate::limits::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
        },
        new_connections_per_second: raw.new_connections_per_second,
        idle_timeout,
        frame_timeout,
        write_queue: positive(raw.write_queue, "write_queue")?.unwrap_or(DEFAULT_WRITE_QUEUE),
        write_queue_bytes: size(
            &raw.write_queue_bytes,
            "write_queue_bytes",
            crate::limits::DEFAULT_WRITE_QUEUE_BYTES,
        )?,
        budgets,
        cpu_share,
        slow_consumer: match raw.slow_consumer.as_deref() {
            Some(s) => s
                .parse()
                .map_err(|e: String| anyhow!("limits.slow_consumer: {e}"))?,
            None => SlowConsumer::Drop,
        },
        instance: Some(InstanceLimits {
            memory,
            call_deadline,
        }),
    })
}

/// A share written as a percentage (`"25%"`), 1 to 100; a bare number is refused with an
/// example, since `0.25` and `25` would both be plausible.
fn percent(value: &toml::Value) -> Result<f64> {
    let text = value
        .as_str()
        .ok_or_else(|| anyhow!("expected a percentage such as \"25%\""))?;
    let number = text
        .trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("expected a percentage such as \"25%\", not {text:?}"))?;
    if !(1.0..=100.0).contains(&number) {
        bail!("must be between 1% and 100%, not {text:?}");
    }
    Ok(number / 100.0)
}

fn tls_options(raw: RawTls, base: &Path) -> Result<(TlsOptions, Vec<(String, PluginRef)>)> {
    let file = |p: &Path, key: &str| -> Result<PathBuf> {
        let path = base.join(p);
        if !path.is_file() {
            bail!("tls.{key}: {} does not exist", path.display());
        }
        Ok(path)
    };
    let mut sni = Vec::new();
    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    for entry in raw.sni {
        let name = entry.name.to_ascii_lowercase();
        if name.is_empty() || !seen.insert(name.clone()) {
            bail!("tls.sni: name `{}` is empty or listed twice", entry.name);
        }
        sni.push(SniCert {
            name: name.clone(),
            cert: file(&entry.cert, "sni.cert")?,
            key: file(&entry.key, "sni.key")?,
        });
        if let Some(plugin) = entry.plugin {
            let plugin = PluginRef::parse(&plugin, base)
                .with_context(|| format!("tls.sni `{name}`: plugin"))?;
            routes.push((name, plugin));
        }
    }
    let options = TlsOptions {
        cert: file(&raw.cert, "cert")?,
        key: file(&raw.key, "key")?,
        client_ca: raw
            .client_ca
            .as_deref()
            .map(|p| file(p, "client_ca"))
            .transpose()?,
        client_cert_optional: raw.client_cert_optional,
        alpn: raw.alpn,
        handshake_timeout: opt_duration(raw.handshake_timeout.as_deref(), "tls.handshake_timeout")?
            .unwrap_or(defaults::HANDSHAKE_TIMEOUT),
        sni,
    };
    if options.client_cert_optional && options.client_ca.is_none() {
        bail!("tls.client_cert_optional needs tls.client_ca");
    }
    Ok((options, routes))
}

/// A timeout that is on by default: left out, `default`; `"off"`, none; otherwise a positive
/// duration.
fn switchable_duration(
    text: Option<&str>,
    key: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    match text {
        None => Ok(default),
        Some("off") => Ok(None),
        Some(text) => match opt_duration(Some(text), key)? {
            Some(d) if d.is_zero() => bail!("{key}: must be more than zero (\"off\" for none)"),
            d => Ok(d),
        },
    }
}

/// A TOML error as one line: where, the line itself, and what is wrong (the parser's own
/// rendering spreads over five lines, and start-up errors are one).
fn toml_error(text: &str, err: &toml::de::Error) -> anyhow::Error {
    let Some(span) = err.span() else {
        return anyhow!("{}", err.message());
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let number = text[..start].matches('\n').count() + 1;
    anyhow!(
        "line {number} (`{}`): {}",
        text[line_start..line_end].trim(),
        err.message()
    )
}

fn opt_duration(text: Option<&str>, key: &str) -> Result<Option<Duration>> {
    text.map(|t| parse_duration(t).map_err(|e| anyhow!("{key}: {e}")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::framing::websocket::Replies;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/tmp/pier.toml"))
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../examples/pier.toml");
        let config = Config::parse(text, Path::new("examples/pier.toml")).expect("valid");
        assert_eq!(config.listeners.len(), 5);
        assert_eq!(config.upstreams.len(), 1);
        let door = &config.listeners[0].doors[0];
        assert_eq!(door.framing, Framing::WebSocket);
        assert_eq!(door.websocket.as_ref().map(|w| w.path.as_str()), Some("/"));
        assert_eq!(config.listeners[4].upstreams, ["echo-backend"]);
        assert_eq!(
            config.admin,
            Some("127.0.0.1:9090".parse().expect("address"))
        );
        assert_eq!(
            config.listeners[0].limits.slow_consumer,
            SlowConsumer::Close
        );
    }

    #[test]
    fn upstreams_are_read_checked_and_granted_by_name() {
        let config = parse(
            r#"
            [[upstream]]
            name = "backend"
            addresses = ["127.0.0.1:9000", "localhost:9001"]
            framing = "length-prefixed"
            max_size = 3
            idle_timeout = "2s"
            connect_timeout = "250ms"
            request_timeout = "1s"
            [upstream.tls]
            ca = "ca.pem"
            cert = "client.pem"
            key = "client-key.pem"
            server_name = "backend.test"

            [[listener]]
            name = "front"
            address = "127.0.0.1:0"
            plugin = "proxy"
            upstreams = ["backend"]
            "#,
        )
        .expect("valid");
        let up = &config.upstreams[0];
        assert_eq!(up.addresses.len(), 2);
        assert_eq!(up.framing, Framing::LengthPrefixed);
        assert_eq!(up.max_size, 3);
        assert_eq!(up.idle_timeout, Duration::from_secs(2));
        assert_eq!(up.connect_timeout, Duration::from_millis(250));
        assert_eq!(up.request_timeout, Duration::from_secs(1));
        let tls = up.tls.as_ref().expect("tls");
        assert_eq!(tls.ca.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert!(tls.verify);
        assert_eq!(config.listeners[0].upstreams, ["backend"]);

        let refused = |text: &str, needle: &str| {
            let err = format!("{:#}", parse(text).expect_err("refused"));
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        };
        let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\n";
        refused(
            &format!("{listener}upstreams = [\"nope\"]"),
            "no upstream named `nope`",
        );
        let up = |body: &str| format!("[[upstream]]\nname = \"u\"\n{body}\n{listener}");
        refused(&up("addresses = []"), "at least one host:port");
        refused(&up("addresses = [\"nohost\"]"), "is not host:port");
        refused(&up("addresses = [\"a:1\"]\nmax_size = 0"), "max_size");
        refused(
            &up("addresses = [\"a:1\"]\nmax_size = 99999999"),
            "at most 10000",
        );
        refused(
            &up("addresses = [\"a:1\"]\nframing = \"http\""),
            "raw, lines or length-prefixed",
        );
        refused(
            &up("addresses = [\"a:1\"]\nidle_timeout = \"0s\""),
            "idle_timeout",
        );
        refused(
            &up("addresses = [\"a:1\"]\n[upstream.tls]\nverify = true"),
            "tls.ca",
        );
        refused(
            &up("addresses = [\"a:1\"]\ncolour = 1"),
            "unknown field `colour`",
        );
        refused(
            &format!(
                "[[upstream]]\nname = \"u\"\naddresses = [\"a:1\"]\n{}",
                up("addresses = [\"a:1\"]")
            ),
            "defined twice",
        );
    }

    #[test]
    fn a_full_listener_is_read_with_every_value_checked() {
        let config = parse(
            r#"
            [[listener]]
            name = "chat"
            address = "127.0.0.1:7000"
            reuse_port = true
            plugin = "chat"
            max_frame = "64KiB"
            [listener.limits]
            max_connections = 5
            max_connections_per_address = 2
            new_connections_per_second = 10
            memory = "16MiB"
            call_deadline = "50ms"
            idle_timeout = "30s"
            write_queue = 8
            slow_consumer = "close"
            [listener.plugin_config]
            greeting = "hi"
            limit = 3
            "#,
        )
        .expect("valid");
        let l = &config.listeners[0];
        assert_eq!(l.framing, Framing::Lines, "the built-in's framing");
        assert!(l.reuse_port);
        assert_eq!(l.max_frame, 64 * 1024);
        assert_eq!(l.limits.max_connections, 5);
        assert_eq!(l.limits.max_connections_per_address, Some(2));
        assert_eq!(l.limits.new_connections_per_second, Some(10));
        assert_eq!(l.limits.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(l.limits.slow_consumer, SlowConsumer::Close);
        assert_eq!(
            l.limits.instance,
            Some(InstanceLimits {
                memory: 16 << 20,
                call_deadline: Duration::from_millis(50)
            })
        );
        assert_eq!(
            l.plugin_config.get("greeting").map(String::as_str),
            Some("hi")
        );
        assert_eq!(l.plugin_config.get("limit").map(String::as_str), Some("3"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nplugin = \"echo\"\nmax_conections = 3\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
        let err = parse(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nplugin = \"echo\"\n[listener.limits]\nmemroy = 1\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("memroy"), "{err:#}");
    }

    #[test]
    fn doors_and_websocket_settings_are_read_and_checked() {
        let base = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nplugin = \"chat\"\nframing = \"lines\"\n";
        let config = parse(&format!(
            "{base}[[listener.door]]\naddress = \"127.0.0.1:2\"\nframing = \"websocket\"\n\
             [listener.door.websocket]\npath = \"/chat\"\norigins = [\"http://x\"]\nreplies = \"binary\"\n"
        ))
        .expect("valid");
        let door = &config.listeners[0].doors[0];
        let ws = door.websocket.as_ref().expect("websocket settings");
        assert_eq!((ws.path.as_str(), ws.replies), ("/chat", Replies::Binary));
        assert_eq!(ws.origins, ["http://x"]);
        // A door without its table gets the defaults; a listener of another framing may not
        // have one; a door may not reuse an address; a path must be plain.
        let plain = parse(&format!(
            "{base}[[listener.door]]\naddress = \"127.0.0.1:2\"\nframing = \"websocket\"\n"
        ))
        .expect("valid");
        assert_eq!(
            plain.listeners[0].doors[0].websocket,
            Some(WebSocketSettings::default())
        );
        for (bad, expected) in [
            ("[listener.websocket]\npath = \"/\"\n", "only for framing"),
            (
                "[[listener.door]]\naddress = \"127.0.0.1:1\"\nframing = \"raw\"\n",
                "used by another",
            ),
            (
                "[[listener.door]]\naddress = \"127.0.0.1:2\"\nframing = \"websocket\"\n[listener.door.websocket]\npath = \"chat\"\n",
                "must start with /",
            ),
            (
                "[[listener.door]]\naddress = \"127.0.0.1:2\"\nframing = \"ws\"\n",
                "unknown framing",
            ),
        ] {
            let err = parse(&format!("{base}{bad}")).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{bad}: {err:#}");
        }
    }

    #[test]
    fn proxy_protocol_needs_trusted_balancers() {
        let base = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nplugin = \"echo\"\n";
        let config = parse(&format!(
            "{base}proxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/8\", \"::1\"]\n"
        ))
        .expect("valid");
        let proxy = config.listeners[0].proxy.as_ref().expect("proxy settings");
        assert_eq!(proxy.version, crate::net::proxy::ProxyVersion::V2);
        assert!(proxy.trusts("10.20.30.40".parse().expect("ip")));
        assert!(
            proxy.trusts("::ffff:10.0.0.1".parse().expect("ip")),
            "IPv4-mapped"
        );
        assert!(proxy.trusts("::1".parse().expect("ip")));
        assert!(!proxy.trusts("192.168.0.1".parse().expect("ip")));
        for (bad, expected) in [
            ("proxy_protocol = \"v2\"\n", "needs proxy_from"),
            (
                "proxy_from = [\"10.0.0.0/8\"]\n",
                "only with proxy_protocol",
            ),
            (
                "proxy_protocol = \"v3\"\nproxy_from = [\"10.0.0.0/8\"]\n",
                "unknown proxy_protocol",
            ),
            (
                "proxy_protocol = \"any\"\nproxy_from = [\"10.0.0.0/33\"]\n",
                "not an address",
            ),
        ] {
            let err = parse(&format!("{base}{bad}")).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{bad}: {err:#}");
        }
    }

    #[test]
    fn bad_values_name_listener_and_key() {
        let cases = [
            ("address = \"nowhere\"", "address"),
            ("plugin = \"nope\"", "plugin"),
            ("framing = \"xml\"", "framing"),
            ("max_frame = \"12 parsecs\"", "max_frame"),
            ("upstreams = [\"db\"]", "upstreams"),
            ("[listener.limits]\nmemory = \"1KiB\"", "limits.memory"),
            (
                "[listener.limits]\ncall_deadline = \"soon\"",
                "limits.call_deadline",
            ),
            (
                "[listener.limits]\nslow_consumer = \"wait\"",
                "limits.slow_consumer",
            ),
            (
                "[listener.limits]\nmax_connections = 0",
                "limits.max_connections",
            ),
            (
                "[listener.tls]\ncert = \"missing.pem\"\nkey = \"k.pem\"",
                "tls.cert",
            ),
        ];
        for (extra, key) in cases {
            let mut text = String::from("[[listener]]\nname = \"t\"\n");
            for (k, v) in [("address", "\"127.0.0.1:7\""), ("plugin", "\"echo\"")] {
                if !extra.starts_with(k) {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
            text.push_str(extra);
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                err.contains("listener `t`") && err.contains(key),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn a_bare_number_as_a_duration_is_refused_with_an_example() {
        let text = "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:7\"\nplugin = \"echo\"\n\
                    [listener.limits]\ncall_deadline = 500\n";
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(
            err.contains("expected a duration such as \"500ms\"") && err.contains("call_deadline"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("[server]\ndrain_timeout = 2.5\n").unwrap_err()
        );
        assert!(
            err.contains("expected a duration such as \"500ms\""),
            "{err}"
        );
    }

    #[test]
    fn names_and_addresses_are_unique() {
        let two = |a: &str, b: &str, pa: &str, pb: &str| {
            format!(
                "[[listener]]\nname = \"{a}\"\naddress = \"{pa}\"\nplugin = \"echo\"\n\
                 [[listener]]\nname = \"{b}\"\naddress = \"{pb}\"\nplugin = \"echo\"\n"
            )
        };
        let err = parse(&two("a", "a", "127.0.0.1:1", "127.0.0.1:2")).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err:#}");
        let err = parse(&two("a", "b", "127.0.0.1:1", "127.0.0.1:1")).unwrap_err();
        assert!(err.to_string().contains("used by another"), "{err:#}");
        parse(&two("a", "b", "127.0.0.1:0", "127.0.0.1:0")).expect("port 0 may repeat");
    }

    #[test]
    fn an_empty_config_is_refused() {
        assert!(parse("").is_err());
    }
}
