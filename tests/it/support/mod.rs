//! What the integration tests share: an in-process pier on 127.0.0.1:0 and framed clients over
//! real sockets (here), the `pier` binary as a child process ([`served`]) and ports that must be
//! known before anything listens on them ([`ports`]). Every wait is bounded so a broken server
//! fails a test instead of hanging it.

#![allow(dead_code)]

pub mod nats;
pub mod ports;
pub mod served;
pub mod venv;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use pier::{Framing, Listener, Runtime, RuntimeConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound on any single wait in a test, in-process or of the binary: generous, because a
/// passing test never waits for it and a busy 2-core CI machine is slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long [`eventually`] sleeps between two looks.
pub const POLL: Duration = Duration::from_millis(10);

/// Looks at `check` until it holds, failing the test after [`WAIT`]. For states that become
/// true at some point after an event the test can see (a connection leaving the registry, a
/// counter catching up), never a fixed sleep: a busy machine only makes it take longer.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    eventually_within(what, WAIT, async || check().await.then_some(())).await
}

/// Like [`eventually`], returning what `check` found once it found something.
pub async fn eventually_some<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, WAIT, check).await
}

/// Looks at `check` until it returns something, failing the test after `bound`.
pub async fn eventually_within<T>(
    what: &str,
    bound: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The built-in echo plugin.
pub fn echo_wasm() -> Vec<u8> {
    builtin_wasm("echo")
}

/// A built-in plugin's component.
pub fn builtin_wasm(name: &str) -> Vec<u8> {
    pier::builtin::find(name).expect("built in").wasm.to_vec()
}

/// The misbehaving test plugin (see guests/test/faulty).
pub fn faulty_wasm() -> Vec<u8> {
    std::fs::read(pier::builtin::guest_path("pier_faulty.wasm"))
        .expect("the build produced pier_faulty.wasm")
}

/// A runtime with a short call deadline, shared by the tests of one binary.
pub fn runtime() -> Arc<Runtime> {
    static RT: OnceLock<Arc<Runtime>> = OnceLock::new();
    RT.get_or_init(|| runtime_with(None)).clone()
}

/// A runtime like [`runtime`], optionally replacing instances after every `recycle_after` calls.
pub fn runtime_with(recycle_after: Option<u64>) -> Arc<Runtime> {
    Runtime::new(RuntimeConfig {
        call_deadline: Duration::from_millis(300),
        memory_limit: 32 * 1024 * 1024,
        cache_dir: Some(std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pier-cache")),
        max_instances: 128,
        recycle_after,
    })
    .expect("runtime")
}

/// How to start a test server.
pub struct Options {
    /// Framing of the listener.
    pub framing: Framing,
    /// Frame limit.
    pub max_frame: usize,
    /// Worker threads.
    pub workers: usize,
    /// Connection limit.
    pub max_connections: usize,
    /// Replace instances after this many calls (a dedicated runtime is made for it).
    pub recycle_after: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            framing: Framing::Lines,
            max_frame: 1024 * 1024,
            workers: 2,
            max_connections: 10_000,
            recycle_after: None,
        }
    }
}

/// A pier server running inside the test process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its framing, so clients can match it.
    pub framing: Framing,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Loads `wasm` and serves it on 127.0.0.1:0.
    pub async fn start(wasm: &[u8], opts: Options) -> TestServer {
        let runtime = match opts.recycle_after {
            Some(n) => runtime_with(Some(n)),
            None => runtime(),
        };
        let server = Server::builder()
            .runtime(runtime)
            .workers(opts.workers)
            .drain_timeout(Duration::from_secs(5))
            .build()
            .expect("workers start");
        let plugin = server.load_plugin("test", wasm).expect("plugin loads");
        let listener = Listener::builder("test", plugin)
            .framing(opts.framing)
            .max_frame(opts.max_frame)
            .write_queue(64)
            .max_connections(opts.max_connections)
            .build();
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.add(socket, listener).expect("listening");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
            server.shutdown().await;
            Ok(())
        });
        TestServer {
            addr,
            framing: opts.framing,
            stop: Some(tx),
            task,
        }
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, self.framing).await
    }

    /// Shuts the server down and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
    }
}

/// A framed client over a real socket.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    framing: Framing,
    buf: BytesMut,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr, framing: Framing) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self::from_stream(stream, framing)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream, framing: Framing) -> Client {
        Client {
            stream,
            framing,
            buf: BytesMut::new(),
        }
    }

    /// Encodes `frame` with the client's framing.
    pub fn encode(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.framing.encode(frame, &mut out).expect("encode");
        out.to_vec()
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &[u8]) {
        let bytes = self.encode(frame);
        self.stream.write_all(&bytes).await.expect("write");
    }

    /// Writes raw bytes.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the next frame; `None` if the server closed the connection (or reset it).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let mut decoder = self.framing.client_decoder(64 * 1024 * 1024);
        loop {
            if let Some(frame) = decoder.decode(&mut self.buf).expect("valid reply framing") {
                return Some(frame.to_vec());
            }
            self.buf.reserve(64 * 1024);
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("reply or close in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends a frame and returns the reply.
    pub async fn ask(&mut self, frame: &[u8]) -> Vec<u8> {
        self.send(frame).await;
        self.recv().await.expect("a reply")
    }

    /// Waits until the server closes this connection; true if it did within [`WAIT`].
    pub async fn closed_by_server(&mut self) -> bool {
        self.closed_by_server_within(WAIT).await
    }

    /// Waits until the server closes this connection; true if it did within `bound`.
    pub async fn closed_by_server_within(&mut self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        let mut scratch = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// `Echo: ` + frame.
pub fn echoed(frame: &[u8]) -> Vec<u8> {
    let mut v = b"Echo: ".to_vec();
    v.extend_from_slice(frame);
    v
}

/// A test plugin's component file, as the build wrote it.
pub fn guest_file(name: &str) -> std::path::PathBuf {
    let path = pier::builtin::guest_path(name);
    assert!(path.exists(), "the build produced {}", path.display());
    path
}

/// A fresh, empty folder for one test's files.
pub fn scratch_dir(test: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("scratch")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

/// pier serving a pier.toml inside the test process, through the same [`Deployer`] the binary
/// uses, so reloads can be driven and awaited directly.
///
/// [`Deployer`]: pier::Deployer
pub struct Deployed {
    /// Applies config and plugin changes.
    pub deployer: Arc<pier::Deployer>,
    /// Where pier.toml lives; relative plugin paths resolve against it.
    pub dir: std::path::PathBuf,
}

impl Deployed {
    /// Writes `toml` to `dir/pier.toml` and starts every listener in it (on 2 workers unless
    /// `[server] workers` says otherwise).
    pub async fn start(dir: &std::path::Path, toml: &str) -> Deployed {
        let path = dir.join("pier.toml");
        std::fs::write(&path, toml).expect("write pier.toml");
        let config = pier::Config::load(&path).expect("valid pier.toml");
        // Like `pier serve --config`: the instance pool's slots fit the largest memory limit.
        let runtime = Runtime::new(RuntimeConfig {
            memory_limit: config.largest_memory(),
            call_deadline: Duration::from_millis(300),
            cache_dir: Some(
                std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pier-cache"),
            ),
            max_instances: 64,
            recycle_after: None,
        })
        .expect("runtime");
        let server = Server::builder()
            .runtime(runtime.clone())
            .workers(config.server.workers.unwrap_or(2))
            .drain_timeout(Duration::from_secs(5))
            .build()
            .expect("workers start");
        let deployer = pier::Deployer::new(runtime, server, config, Some(path));
        deployer.start().await.expect("listeners start");
        Deployed {
            deployer,
            dir: dir.to_path_buf(),
        }
    }

    /// The address listener `name` is bound to.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.deployer
            .server()
            .listeners()
            .into_iter()
            .find(|(l, _)| &*l.name == name)
            .map(|(_, addr)| addr)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// A client of listener `name`, using its framing.
    pub async fn client(&self, name: &str) -> Client {
        let framing = self
            .deployer
            .server()
            .listener(name)
            .map(|l| l.framing)
            .unwrap_or_else(|| panic!("no listener named {name}"));
        Client::connect(self.addr(name), framing).await
    }

    /// Rewrites pier.toml and reloads it, as SIGHUP would.
    pub async fn reload_config(&self, toml: &str) -> pier::ReloadReport {
        std::fs::write(self.dir.join("pier.toml"), toml).expect("write pier.toml");
        self.deployer.reload().await.expect("reload accepted")
    }

    /// Drains and stops every listener.
    pub async fn stop(self) {
        tokio::time::timeout(WAIT, self.deployer.server().shutdown())
            .await
            .expect("server stops in time");
    }
}
