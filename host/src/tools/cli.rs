//! The `pier` command line: argument definitions (clap derive; `--help` comes from these doc
//! comments) and the glue that turns them into a running server or a client call.
//!
//! Every start-up failure becomes one line on stderr, `pier: <what went wrong>`, and exit code 1.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::info;

use crate::deploy::Deployer;
use crate::deploy::config::{Config, ListenerSpec, PluginRef, ServerSection};
use crate::deploy::handover::{self, Relaunch};
use crate::deploy::inherit::{ADMIN_KEY, Inherited};
use crate::limits::{DEFAULT_WRITE_QUEUE, InstanceLimits, Limits};
use crate::net::framing::Framing;
use crate::net::server::{Server, ServerConfig};
use crate::runtime::{Runtime, RuntimeConfig};

/// pier: a TCP server whose message handlers are sandboxed WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "pier", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive list);
    /// `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    /// Log line format: `text` (readable) or `json` (one object per line, for collectors; the
    /// connection's listener, plugin and id are in its `span`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve TCP clients with a plugin (the built-in echo plugin by default), or every listener
    /// of a pier.toml with `--config`.
    Serve(Box<ServeArgs>),
    /// Ask a running `pier serve` to reload its config and plugins (sends it SIGHUP).
    Reload(ReloadArgs),
    /// Replace a running `pier serve` with the binary at its path, without closing its
    /// listening sockets (sends it SIGUSR2 and waits for the new process to report ready).
    Upgrade(UpgradeArgs),
    /// Roll a plugin out to every node of a cluster that serves a listener (or back to the
    /// version before): each node checks it as a local reload does and hot-swaps it.
    Deploy(DeployArgs),
    /// Send one frame to a server and print the reply.
    Send(SendArgs),
    /// Check that a file is a pier plugin and show what it imports and exports.
    Check(CheckArgs),
    /// Create a plugin project (Rust, Python or JavaScript) that builds as it is.
    New(NewArgs),
    /// Load a server with frames and report round trips/s, latency and server CPU; with
    /// `--compare`, pier against the native baseline in the same run.
    Bench(crate::tools::bench::BenchArgs),
    /// Run the native (no WebAssembly) echo server that benchmarks compare pier with.
    Baseline(crate::tools::bench::BaselineArgs),
    /// Test certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `pier cert`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Write a test CA, a server certificate for HOSTS and a client certificate (PEM files).
    Generate {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Names and addresses the server certificate is valid for (DNS names and IPs).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// `pier new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The plugin's name (lower-case letters, digits, `-`, `_`); also its folder by default.
    pub name: String,

    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: crate::tools::scaffold::Lang,

    /// Where to create the project (default: ./NAME). Must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `pier serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A plugin: a `.wasm` component file or a built-in (default: echo). The built-ins are
    /// listed from `builtin::BUILTINS` at start-up (see `parse_args`).
    pub plugin: Option<String>,

    /// Serve the listeners of this pier.toml instead of one plugin; SIGHUP re-reads it.
    #[arg(long, conflicts_with_all = ["plugin", "tls_cert", "sni"])]
    pub config: Option<PathBuf>,

    /// Reload the plugin when its file changes (always on with --config unless
    /// `[server] watch = false`).
    #[arg(long)]
    pub watch: bool,

    /// Write the process id here, for `pier reload --pid-file`.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,

    /// Close connections that send nothing for this long, e.g. `30s`; `off` for never.
    #[arg(long, default_value = "5m", value_parser = parse_switchable_duration)]
    pub idle_timeout: Switchable<Duration>,

    /// Close a connection whose frame is still incomplete this long after its first byte
    /// arrived (the slowloris defence); `off` for never.
    #[arg(long, default_value = "30s", value_parser = parse_switchable_duration)]
    pub frame_timeout: Switchable<Duration>,

    /// Most connections open at once from one client address; 0 for no limit.
    #[arg(long, default_value_t = crate::limits::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,

    /// Address to listen on; port 0 picks a free port (the real one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Join this node's listeners to the same-named listeners of other pier nodes through these
    /// NATS servers (repeat or comma-separate; the client fails over between them). Overrides
    /// the servers of a config's `[cluster]`.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub cluster: Vec<String>,

    /// This node's name in the cluster (default: the config's, else host name and pid).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Bind with SO_REUSEPORT: several pier processes (or an old and a new one) accept on the
    /// same address, each one started with this flag; the kernel spreads connections over them.
    #[arg(long)]
    pub reuse_port: bool,

    /// Expect a PROXY protocol header (v1, v2 or any) from a load balancer before each client's
    /// bytes; its address is then the client's everywhere. Needs `--proxy-from`.
    #[arg(long, value_name = "VERSION", requires = "proxy_from")]
    pub proxy_protocol: Option<String>,

    /// The load balancers trusted to send the PROXY header (address or network, repeat or
    /// comma-separate); connections from elsewhere are refused.
    #[arg(
        long,
        value_name = "NET",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    pub proxy_from: Vec<String>,

    /// Upstream server(s) for the plugin, as `host:port` (repeat or comma-separate for
    /// failover): granted to the listener as the upstream named `upstream`, with the
    /// listener's framing and default pool settings. `pier serve proxy --upstream ADDR` is a
    /// one-line proxy.
    #[arg(long, value_delimiter = ',', conflicts_with = "config")]
    pub upstream: Vec<String>,

    /// Serve the admin endpoint (`/metrics`, `/healthz`, `/plugins`, `/connections`, `POST
    /// /reload`) on this address, e.g. `127.0.0.1:9090` (port 0 picks one; the real one is
    /// printed). Overrides pier.toml's `[admin] address`. Off by default.
    #[arg(long)]
    pub admin: Option<SocketAddr>,

    /// How frames are delimited. Default: the built-in plugin's own framing, or raw for a file
    /// (each built-in's is listed at start-up, see `parse_args`).
    #[arg(long, value_enum)]
    pub framing: Option<Framing>,

    /// Largest frame a client may send, e.g. `65536`, `64KiB`, `1MiB`.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_frame: usize,

    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Most connections open at once; further clients are closed at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Longest one plugin call may run, e.g. `500ms`, `2s`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub call_deadline: Duration,

    /// Most memory one plugin instance may use, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub memory_limit: usize,

    /// Replace each worker's plugin instance after this many calls (fresh guest memory).
    #[arg(long)]
    pub recycle_after: Option<u64>,

    /// Frames that may wait for a slow client before further sends to it fail.
    #[arg(long, default_value_t = DEFAULT_WRITE_QUEUE)]
    pub write_queue: usize,

    /// How long SIGINT/SIGTERM waits for connections to flush before closing them.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Directory for compiled plugins (default: $PIER_CACHE_DIR, $XDG_CACHE_HOME/pier or
    /// ~/.cache/pier).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins on every start instead of using the cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Serve TLS with this certificate chain (PEM, leaf first). SIGHUP re-reads the files.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, RSA or EC).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// With --client-ca: verify a client certificate when one is presented, but let clients
    /// without one in.
    #[arg(long, requires = "client_ca")]
    pub client_cert_optional: bool,

    /// ALPN protocols to offer, comma-separated, in preference order.
    #[arg(long, value_delimiter = ',', requires = "tls_cert")]
    pub alpn: Vec<String>,

    /// Longest a TLS handshake may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// An extra certificate for clients asking for NAME with SNI: `NAME,CERT.pem,KEY.pem`
    /// (repeatable). Others get --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub sni: Vec<crate::net::tls::SniCert>,
}

/// `pier reload`.
#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// The process id of `pier serve`.
    #[arg(
        long,
        required_unless_present = "pid_file",
        conflicts_with = "pid_file"
    )]
    pub pid: Option<i32>,

    /// The file `pier serve --pid-file` wrote.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

/// `pier upgrade`.
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The file `pier serve --pid-file` wrote; the outcome is read from FILE.upgrade.
    #[arg(long)]
    pub pid_file: PathBuf,

    /// How long to wait for the outcome.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `pier deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The cluster's NATS servers (repeat or comma-separate).
    #[arg(long, value_name = "URL", value_delimiter = ',', required = true)]
    pub cluster: Vec<String>,

    /// Take the credentials, TLS settings and subject prefix from this pier.toml's `[cluster]`.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Point the listener back at the version deployed before the current one.
    #[arg(long)]
    pub rollback: bool,

    /// The listener (tenant) to deploy to.
    pub listener: String,

    /// The component to deploy (not with `--rollback`).
    #[arg(required_unless_present = "rollback", conflicts_with = "rollback")]
    pub file: Option<PathBuf>,

    /// How long to wait for every node's answer.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `pier send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Server address, e.g. `127.0.0.1:8080`.
    pub addr: String,

    /// The message (one frame). Omit it with `--stdin` or `--interactive`.
    #[arg(required_unless_present_any = ["stdin", "interactive"])]
    pub message: Option<String>,

    /// Interactive: send each line typed as a frame and print every frame that arrives. With
    /// `--framing length-prefixed`, `/ping`, `/echo TEXT`, `/broadcast TEXT`, `/stats`,
    /// `/custom TYPE` build length-prefixed JSON protocol messages. `/exit` or end of input quits.
    #[arg(short, long, conflicts_with_all = ["message", "stdin", "hex"])]
    pub interactive: bool,

    /// How frames are delimited.
    #[arg(long, value_enum, default_value = "raw")]
    pub framing: Framing,

    /// With `--framing websocket`: the path the upgrade asks for.
    #[arg(long, default_value = "/")]
    pub path: String,

    /// MESSAGE is hex, and the reply is printed as hex.
    #[arg(long)]
    pub hex: bool,

    /// Read the message from standard input (all of it, as one frame).
    #[arg(long, conflicts_with = "message")]
    pub stdin: bool,

    /// How long to wait for the connection and the reply, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Largest reply accepted.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub max_frame: usize,

    /// Send the message this many times, reusing pooled connections (the client side of
    /// kn-sock's connection pool), and print a summary after the first reply.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,

    /// With `--repeat`: requests in flight at once, each on its own pooled connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,

    /// TLS options.
    #[command(flatten)]
    pub tls: crate::net::tls::client::ClientTlsArgs,
}

/// `pier check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The plugin: a `.wasm` component file or a built-in name.
    pub plugin: String,

    /// Directory for compiled plugins, shared with `pier serve` (default: $PIER_CACHE_DIR,
    /// $XDG_CACHE_HOME/pier or ~/.cache/pier), so checking a plugin also readies it to serve.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,

    /// Compile the plugin even if the cache holds it, and leave the cache alone.
    #[arg(long)]
    pub no_cache: bool,
}

use crate::deploy::config::parse_size;

/// Entry point of the binary: runs the command and turns an error into one stderr line.
pub fn main() -> std::process::ExitCode {
    let cli = parse_args();
    init_logging(&cli.log_level, cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Reload(args) => reload(args),
        Command::Upgrade(args) => upgrade(args),
        Command::Deploy(args) => deploy(args),
        Command::Send(args) => send(args),
        Command::Check(args) => check(args),
        Command::New(args) => new_plugin(args),
        Command::Bench(args) => crate::tools::bench::bench_main(args),
        Command::Baseline(args) => crate::tools::bench::baseline_main(args),
        Command::Cert(CertCommand::Generate { out, hosts, days }) => {
            cert_generate(&out, &hosts, days)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pier: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line, with the built-in plugins listed in `pier serve --help` from
/// [`crate::builtin::BUILTINS`] (a doc comment would go stale when one is added).
fn parse_args() -> Cli {
    let command = Cli::command().mut_subcommand("serve", |serve| {
        serve
            .mut_arg("plugin", |arg| arg.help(plugin_help()))
            .mut_arg("framing", |arg| arg.help(framing_help()))
    });
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit())
}

/// `pier serve PLUGIN`'s help: what a plugin can be, and every built-in with its summary.
fn plugin_help() -> String {
    let width = crate::builtin::BUILTINS
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    let framing_width = crate::builtin::BUILTINS
        .iter()
        .map(|b| b.framing.name().len())
        .max()
        .unwrap_or(0);
    let mut help = String::from(
        "A plugin: a `.wasm` component file or a built-in (default: echo). Built-ins, with the \
         framing they use unless --framing says otherwise:",
    );
    for builtin in crate::builtin::BUILTINS {
        help.push_str(&format!(
            "\n  {:width$}  {:framing_width$}  {}",
            builtin.name,
            builtin.framing.name(),
            builtin.summary
        ));
    }
    help
}

/// `pier serve --framing`'s help, naming each built-in's own framing.
fn framing_help() -> String {
    let own: Vec<String> = crate::builtin::BUILTINS
        .iter()
        .map(|b| format!("{} {}", b.name, b.framing))
        .collect();
    format!(
        "How frames are delimited. Default: the built-in plugin's own framing ({}), or raw for a \
         file.",
        own.join(", ")
    )
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // The NATS client reports every reconnect attempt at info; pier's cluster module says
    // what matters once per outage (`--log-level` directives or RUST_LOG can raise it again).
    let quiet = |filter: EnvFilter| match "async_nats=warn".parse() {
        Ok(directive) if !level.contains("async_nats") => filter.add_directive(directive),
        _ => filter,
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level).map(quiet))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The config `pier serve` runs: the file given with `--config`, or one listener named
/// `default` made from the command line.
fn serve_config(args: &ServeArgs) -> Result<Config> {
    let mut config = single_listener_config(args)?;
    if !args.cluster.is_empty() {
        let node = args
            .node
            .clone()
            .or_else(|| config.cluster.as_ref().map(|c| c.node.clone()));
        let mut spec = crate::cluster::ClusterSpec::from_flags(args.cluster.clone(), node)?;
        if let Some(from_file) = config.cluster.take() {
            spec.auth = from_file.auth;
            spec.tls = from_file.tls;
            spec.subject_prefix = from_file.subject_prefix;
        }
        config.cluster = Some(spec);
    } else if let (Some(node), Some(spec)) = (&args.node, config.cluster.as_mut()) {
        spec.node = node.clone();
    }
    Ok(config)
}

/// The config of `--config FILE`, or of the one listener the flags describe.
fn single_listener_config(args: &ServeArgs) -> Result<Config> {
    if let Some(path) = &args.config {
        return Config::load(path);
    }
    let plugin = PluginRef::parse(args.plugin.as_deref().unwrap_or("echo"), Path::new(""))?;
    let framing = args
        .framing
        .or(plugin.preferred_framing())
        .unwrap_or(Framing::Raw);
    let address = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(resolve(&args.listen))?;
    let tls_timeout = args.tls_cert.as_ref().map(|_| args.handshake_timeout);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::net::tls::TlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.client_ca.clone(),
            client_cert_optional: args.client_cert_optional,
            alpn: args.alpn.clone(),
            handshake_timeout: args.handshake_timeout,
            sni: args.sni.clone(),
        }),
        _ => None,
    };
    let upstreams = if args.upstream.is_empty() {
        Vec::new()
    } else {
        if matches!(framing, Framing::Http | Framing::WebSocket) {
            bail!("--upstream: upstreams use raw, lines or length-prefixed framing, not {framing}");
        }
        vec![crate::upstream::UpstreamSpec {
            name: "upstream".into(),
            addresses: args.upstream.clone(),
            framing,
            max_frame: args.max_frame,
            max_size: crate::deploy::config::defaults::UPSTREAM_MAX_SIZE,
            idle_timeout: crate::deploy::config::defaults::UPSTREAM_IDLE_TIMEOUT,
            connect_timeout: crate::deploy::config::defaults::UPSTREAM_CONNECT_TIMEOUT,
            request_timeout: crate::deploy::config::defaults::UPSTREAM_REQUEST_TIMEOUT,
            tls: None,
        }]
    };
    Ok(Config {
        path: PathBuf::new(),
        cluster: None,
        server: ServerSection {
            workers: args.workers,
            drain_timeout: args.drain_timeout,
            cache_dir: args.cache_dir.clone(),
            watch: args.watch,
        },
        admin: args.admin,
        listeners: vec![ListenerSpec {
            upstreams: upstreams.iter().map(|u| u.name.clone()).collect(),
            name: "default".into(),
            address,
            reuse_port: args.reuse_port,
            plugin,
            framing,
            max_frame: args.max_frame,
            tls,
            sni_plugins: Vec::new(),
            limits: Limits {
                max_connections: args.max_connections.max(1),
                idle_timeout: args.idle_timeout.0,
                frame_timeout: args.frame_timeout.0,
                max_connections_per_address: (args.max_connections_per_address > 0)
                    .then_some(args.max_connections_per_address),
                write_queue: args.write_queue.max(1),
                instance: Some(InstanceLimits {
                    memory: args.memory_limit,
                    call_deadline: args.call_deadline,
                }),
                ..Limits::default()
            },
            plugin_config: Default::default(),
            websocket: (framing == Framing::WebSocket).then(Default::default),
            doors: Vec::new(),
            proxy: crate::deploy::config::proxy_settings(
                args.proxy_protocol.as_deref(),
                &args.proxy_from,
                tls_timeout,
            )?,
        }],
        upstreams,
    })
}

fn serve(args: ServeArgs) -> Result<()> {
    crate::sys::raise_fd_limit();
    let config = serve_config(&args)?;
    if let Some(spec) = &config.cluster {
        // Before anything is counted: the node is a label of the node-local figures.
        crate::ops::metrics::set_node(&spec.node);
    }
    let runtime = Runtime::new(RuntimeConfig {
        memory_limit: config.largest_memory().max(args.memory_limit),
        call_deadline: args.call_deadline,
        recycle_after: args.recycle_after,
        cache_dir: if args.no_cache {
            None
        } else {
            config
                .server
                .cache_dir
                .clone()
                .or_else(crate::runtime::cache::ArtifactCache::default_dir)
        },
        ..RuntimeConfig::default()
    })?;
    let server_config = ServerConfig {
        workers: config
            .server
            .workers
            .unwrap_or(ServerConfig::default().workers),
        drain_timeout: config.server.drain_timeout,
    };
    let watch = config.server.watch;
    // `--admin` wins over the file; kept out of the config so that reloads compare the file
    // with itself.
    let admin = args.admin.or(config.admin);
    let source = args.config.clone();
    // Recorded now: an upgrade starts the binary found at this path later, after it was
    // replaced on disk.
    let relaunch = Relaunch::recorded()?;
    let drain_timeout = server_config.drain_timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut inherited = Inherited::from_env();
        if !inherited.is_empty() {
            // SAFETY: getppid(2) has no preconditions.
            let parent = unsafe { libc::getppid() };
            info!("taking over the listening sockets of process {parent}");
        }
        // The admin address is bound before any listener starts, so that every start-up
        // failure happens while nothing is serving yet: one error line, nothing to drain.
        let admin_listener = match admin {
            Some(addr) => Some(
                crate::deploy::take_or_bind(&mut inherited, ADMIN_KEY, addr, false)
                    .context("admin endpoint")?,
            ),
            None => None,
        };
        // Kept to hand to the next process on an upgrade.
        let admin_socket = match &admin_listener {
            Some(listener) => Some(
                listener
                    .as_fd()
                    .try_clone_to_owned()
                    .context("admin endpoint")?,
            ),
            None => None,
        };
        let server = Server::new(runtime.clone(), &server_config)?;
        let cluster_spec = config.cluster.clone();
        let deployer = Deployer::new(runtime, server.clone(), config, source);
        deployer.inherit(inherited);
        if let Some(spec) = &cluster_spec {
            deployer.join_cluster(crate::cluster::Cluster::start(spec).await?);
        }
        if let Err(err) = deployer.start().await {
            server.shutdown().await;
            return Err(err);
        }
        let stop_admin = tokio_util::sync::CancellationToken::new();
        if let Some(listener) = admin_listener {
            match crate::ops::admin::spawn(listener, deployer.clone(), stop_admin.clone()) {
                Ok(bound) => eprintln!("pier: admin on {bound}"),
                Err(err) => {
                    server.shutdown().await;
                    return Err(err.context("admin endpoint"));
                }
            }
        }
        let own_pid = std::process::id();
        if let Some(path) = &args.pid_file {
            std::fs::write(path, format!("{own_pid}\n"))
                .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        }
        crate::deploy::inherit::notify_ready();
        let mut changes = vec![tokio::spawn(crate::deploy::reload_on_sighup(
            deployer.clone(),
        ))];
        if watch {
            changes.push(tokio::spawn(crate::deploy::watch_plugins(deployer.clone())));
        }
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let upgraded = handover::upgrade_requests(
            &mut shutdown,
            &server,
            &relaunch,
            &admin_socket,
            args.pid_file.as_deref(),
        )
        .await;
        if upgraded {
            // This process no longer serves new clients: nothing may reload or re-add a listener.
            for task in changes {
                task.abort();
            }
            stop_admin.cancel();
            server.stop_accepting().await;
            handover::serve_until_left(&server, drain_timeout, &mut shutdown).await;
        } else {
            stop_admin.cancel();
        }
        server.shutdown().await;
        // After an upgrade the pid file names the new process: leave it.
        if let Some(path) = &args.pid_file
            && std::fs::read_to_string(path).is_ok_and(|text| text.trim() == own_pid.to_string())
        {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
}

/// Resolves a `host:port` listen address.
async fn resolve(listen: &str) -> Result<SocketAddr> {
    match listen.parse() {
        Ok(a) => Ok(a),
        Err(_) => tokio::net::lookup_host(listen)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| anyhow!("cannot resolve listen address `{listen}`")),
    }
}

fn new_plugin(args: NewArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let (build, wasm) = crate::tools::scaffold::create(&args.name, args.lang, &dir)?;
    println!("created {} ({:?})", dir.display(), args.lang);
    println!("build:  cd {} && {build}", dir.display());
    println!("check:  pier check {}", wasm.display());
    println!(
        "serve:  pier serve {} --framing lines --watch",
        wasm.display()
    );
    Ok(())
}

fn reload(args: ReloadArgs) -> Result<()> {
    let pid = match (args.pid, &args.pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => handover::read_pid(file)?,
        (None, None) => bail!("give --pid or --pid-file"),
    };
    if pid <= 0 {
        bail!("{pid} is not a process id");
    }
    // SAFETY: kill(2) with a positive pid and SIGHUP has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    eprintln!("pier: asked process {pid} to reload");
    Ok(())
}

fn deploy(args: DeployArgs) -> Result<()> {
    let mut spec = match &args.config {
        Some(path) => Config::load(path)?
            .cluster
            .ok_or_else(|| anyhow!("{} has no [cluster] section", path.display()))?,
        None => {
            crate::cluster::ClusterSpec::from_flags(args.cluster.clone(), Some("deploy".into()))?
        }
    };
    spec.servers = args.cluster.clone();
    let request = crate::tools::rollout::Request {
        spec,
        listener: args.listener,
        file: args.file,
        timeout: args.timeout,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(crate::tools::rollout::run(request))
}

fn upgrade(args: UpgradeArgs) -> Result<()> {
    let old = handover::read_pid(&args.pid_file)?;
    let new = handover::request(&args.pid_file, args.timeout)?;
    eprintln!("pier: upgraded: process {old} handed its sockets to process {new}");
    Ok(())
}

fn cert_generate(out: &Path, hosts: &[String], days: u32) -> Result<()> {
    let files = crate::net::tls::certgen::generate(out, hosts, days)?;
    let p = |path: &PathBuf| path.display().to_string();
    println!(
        "wrote test certificates for {} (valid {days} days):",
        hosts.join(", ")
    );
    println!(
        "  {}  CA certificate: clients trust this",
        p(&files.ca_cert)
    );
    println!(
        "  {}  CA key: only needed to issue more certificates; keep it private",
        p(&files.ca_key)
    );
    println!("  {}  server certificate", p(&files.server_cert));
    println!("  {}  server key", p(&files.server_key));
    println!(
        "  {}  client certificate (for mutual TLS)",
        p(&files.client_cert)
    );
    println!("  {}  client key", p(&files.client_key));
    println!(
        "serve:  pier serve --tls-cert {} --tls-key {} [--client-ca {}]",
        p(&files.server_cert),
        p(&files.server_key),
        p(&files.ca_cert)
    );
    println!(
        "send:   pier send 127.0.0.1:8080 hello --tls --ca {} [--cert {} --key {}]",
        p(&files.ca_cert),
        p(&files.client_cert),
        p(&files.client_key)
    );
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop pier with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("pier: {name} received, shutting down");
}

fn send(args: SendArgs) -> Result<()> {
    if args.interactive {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        return Ok(rt.block_on(crate::tools::client::interactive(
            &args.addr,
            args.framing,
            &args.path,
            args.max_frame,
            args.timeout,
        ))?);
    }
    let message: Vec<u8> = if args.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        buf
    } else {
        args.message.clone().unwrap_or_default().into_bytes()
    };
    let message = if args.hex {
        let text = String::from_utf8_lossy(&message);
        let compact: String = text.split_whitespace().collect();
        hex::decode(&compact).map_err(|e| anyhow!("MESSAGE is not hex: {e}"))?
    } else {
        message
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.repeat > 1 || args.concurrency > 1 {
        if args.framing == Framing::WebSocket {
            bail!(
                "--repeat and --concurrency speak raw, lines or length-prefixed framing; for WebSocket load use pier bench --framing websocket"
            );
        }
        let summary = rt.block_on(crate::tools::client::repeat(
            crate::tools::client::Repeat {
                addr: args.addr.clone(),
                framing: args.framing,
                max_frame: args.max_frame,
                timeout: args.timeout,
                requests: args.repeat,
                concurrency: args.concurrency,
                tls: &args.tls,
            },
            message,
        ))?;
        let mut stdout = std::io::stdout().lock();
        if let Some(reply) = &summary.first_reply {
            print_reply(&mut stdout, reply, args.hex)?;
        }
        writeln!(stdout, "{summary}")?;
        stdout.flush()?;
        if summary.failed() > 0 {
            bail!(
                "{} of {} requests failed",
                summary.failed(),
                summary.requests
            );
        }
        return Ok(());
    }
    let tls = args.tls.connector(&args.addr)?;
    let reply = rt.block_on(crate::tools::client::send_one(
        &args.addr,
        (args.framing, &args.path),
        &message,
        args.timeout,
        args.max_frame,
        tls,
    ))?;
    let mut stdout = std::io::stdout().lock();
    print_reply(&mut stdout, &reply, args.hex)?;
    stdout.flush()?;
    Ok(())
}

/// Prints a reply frame, as hex with `--hex`, else as it is with a newline added if missing.
fn print_reply(out: &mut impl Write, reply: &[u8], hex: bool) -> Result<()> {
    if hex {
        writeln!(out, "{}", hex::encode(reply))?;
    } else {
        out.write_all(reply)?;
        if !reply.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let source = PluginRef::parse(&args.plugin, Path::new(""))?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir
                .clone()
                .or_else(crate::runtime::cache::ArtifactCache::default_dir)
        },
        ..RuntimeConfig::default()
    })?;
    let plugin = runtime
        .load_plugin(&source.to_string(), &source.read()?)
        .map_err(|err| anyhow!("plugin {source}: {err}"))?;
    let how = if plugin.from_cache {
        "loaded from the compile cache"
    } else {
        "compiled"
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok: {} fits pier:plugin/plugin@0.1.0 (version {}, {how} in {:?})",
        plugin.name, plugin.version, plugin.load_time
    )?;
    writeln!(out, "imports:")?;
    for import in &plugin.imports {
        let note = if import.starts_with("pier:plugin/upstream") {
            "provided by pier on listeners that grant upstreams; refused elsewhere"
        } else if import.starts_with("pier:plugin/") {
            "provided by pier"
        } else if crate::runtime::wasi::provides(import) {
            "WASI, deny by default: no files, environment or sockets; stdio to the log"
        } else {
            "not granted: pier serve refuses a plugin that imports it"
        };
        writeln!(out, "  {import}  ({note})")?;
    }
    writeln!(out, "exports:")?;
    for export in &plugin.exports {
        writeln!(out, "  {export}")?;
    }
    Ok(())
}

/// A limit that can be switched off on the command line (`off`); `None` when it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switchable<T>(pub Option<T>);

/// Parses a duration such as `5m`, or `off`.
fn parse_switchable_duration(text: &str) -> Result<Switchable<Duration>, String> {
    if text == "off" {
        return Ok(Switchable(None));
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero (`off` for none)".into()),
        Ok(d) => Ok(Switchable(Some(d))),
        Err(e) => Err(format!("{e} (expected a duration such as `30s`, or `off`)")),
    }
}
