//! Hot reload through the same `Deployer` the binary uses: a plugin swapped under continuous
//! pipelined traffic, refused replacements, guest state carried by `snapshot`/`restore`, and
//! config reloads that add, change and remove listeners while clients stay connected.

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{Deployed, WAIT, guest_file, scratch_dir};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const V1: &str = "pier_stateful.wasm";
const V2: &str = "pier_stateful_v2.wasm";

/// Puts a copy of test plugin `name` at `dir/plugin.wasm` (replacing it in one rename, as a
/// build tool would) and returns the path.
fn install(dir: &Path, name: &str) -> PathBuf {
    install_bytes(
        dir,
        &std::fs::read(guest_file(name)).expect("read the plugin"),
    )
}

fn install_bytes(dir: &Path, bytes: &[u8]) -> PathBuf {
    let target = dir.join("plugin.wasm");
    let partial = dir.join("plugin.wasm.partial");
    std::fs::write(&partial, bytes).expect("write the plugin");
    std::fs::rename(&partial, &target).expect("rename the plugin into place");
    target
}

fn one_listener(workers: usize) -> String {
    format!(
        r#"
[server]
workers = {workers}

[[listener]]
name = "live"
address = "127.0.0.1:0"
plugin = "plugin.wasm"
framing = "lines"

[listener.limits]
memory = "16MiB"
"#
    )
}

/// Waits until `done()` holds, failing the test after three times `WAIT` (each client must
/// see hundreds of replies, which takes longer on a busy machine).
async fn until(what: &str, done: impl Fn() -> bool) {
    support::eventually_within(what, WAIT * 3, async || done().then_some(())).await
}

/// What one traffic client saw.
#[derive(Default)]
struct Seen {
    v1: AtomicU64,
    v2: AtomicU64,
    /// The guest's frame count in the first reply from v2: above 1 if v2 started from v1's
    /// snapshot rather than empty.
    first_v2_count: AtomicU64,
}

/// A client that keeps up to 8 frames in flight until `stop`, checking that every reply answers
/// the next frame it sent, that versions only move forward (v1, then v2) and that the guest's
/// guest's frame count at its first v2 reply (`Seen::first_v2_count`). Returns how many frames
/// it sent.
async fn traffic(
    addr: std::net::SocketAddr,
    me: usize,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let window = Arc::new(Semaphore::new(8));
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (window, sent, stop) = (window.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                window.acquire().await.expect("window").forget();
                let i = sent.load(Ordering::Relaxed);
                write
                    .write_all(format!("c{me}-{i}\n").as_bytes())
                    .await
                    .expect("write a frame: the connection must stay open");
                sent.fetch_add(1, Ordering::Relaxed);
            }
            write
        })
    };
    let mut lines = BufReader::new(read).lines();
    let mut received = 0u64;
    let mut moved_on = false;
    let mut last_progress = tokio::time::Instant::now();
    loop {
        if writer.is_finished() && received == sent.load(Ordering::Relaxed) {
            break;
        }
        // Short waits, so the loop notices when the writer stopped with nothing in flight.
        let line = match tokio::time::timeout(Duration::from_millis(20), lines.next_line()).await {
            Err(_) => {
                assert!(
                    last_progress.elapsed() < WAIT,
                    "client {me}: no reply for {WAIT:?} with frames in flight"
                );
                continue;
            }
            Ok(read) => read
                .expect("read a reply")
                .unwrap_or_else(|| panic!("client {me} disconnected after {received} replies")),
        };
        last_progress = tokio::time::Instant::now();
        let (head, frame) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("unexpected reply {line:?}"));
        assert_eq!(
            frame,
            format!("c{me}-{received}"),
            "client {me}: replies must answer each frame once, in order"
        );
        let (version, count) = head.split_once(" #").expect("`vN #count` prefix");
        let count: u64 = count.parse().expect("a count");
        match version {
            "v1" => {
                assert!(!moved_on, "client {me}: v1 answered after v2 did");
                seen.v1.fetch_add(1, Ordering::Relaxed);
            }
            "v2" => {
                if !moved_on {
                    seen.first_v2_count.store(count, Ordering::Relaxed);
                }
                moved_on = true;
                seen.v2.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("unknown version {other}"),
        }
        received += 1;
        window.add_permits(1);
    }
    let mut write = writer.await.expect("writer");
    write.shutdown().await.expect("close cleanly");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_pipelined_traffic_drops_no_connection_and_answers_every_frame_once_in_order()
{
    let dir = scratch_dir("reload-under-traffic");
    let plugin = install(&dir, V1);
    let pier = Deployed::start(&dir, &one_listener(2)).await;
    let addr = pier.addr("live");

    const CLIENTS: usize = 6;
    const EACH_SIDE: u64 = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Seen>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(traffic(addr, me, seen[me].clone(), stop.clone())))
        .collect();
    until("every client served by v1", || {
        seen.iter()
            .all(|s| s.v1.load(Ordering::Relaxed) >= EACH_SIDE)
    })
    .await;

    // Broken replacements are refused and v1 keeps serving: not wasm, a core module instead of a
    // component, a truncated component, a component of the wrong world (no handler), one that
    // traps in its start-up code, one that asks for a capability the listener does not grant.
    let v2_bytes = std::fs::read(guest_file(V2)).expect("read v2");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let wrong_world = wat::parse_str("(component)").expect("wat");
    let read = |name| std::fs::read(guest_file(name)).expect("read a test plugin");
    for broken in [
        b"not a plugin".to_vec(),
        core_module,
        v2_bytes[..v2_bytes.len() / 2].to_vec(),
        wrong_world,
        read("pier_trapstart.wasm"),
        read("pier_greedy.wasm"),
    ] {
        install_bytes(&dir, &broken);
        let report = pier
            .deployer
            .reload_files(&HashSet::from([plugin.clone()]))
            .await;
        assert!(report.swapped.is_empty(), "a broken file was swapped in");
    }
    let before: Vec<u64> = seen.iter().map(|s| s.v1.load(Ordering::Relaxed)).collect();
    until("v1 still serving after the refused reloads", || {
        seen.iter()
            .zip(&before)
            .all(|(s, b)| s.v1.load(Ordering::Relaxed) >= b + 50)
    })
    .await;
    assert!(seen.iter().all(|s| s.v2.load(Ordering::Relaxed) == 0));

    install(&dir, V2);
    let report = pier
        .deployer
        .reload_files(&HashSet::from([plugin.clone()]))
        .await;
    assert_eq!(report.swapped, vec!["live".to_string()]);
    until("every client served by v2", || {
        seen.iter()
            .all(|s| s.v2.load(Ordering::Relaxed) >= EACH_SIDE)
    })
    .await;
    // Each worker's v2 instance restored its v1 instance's count. (A connection may meet a
    // fresh extra instance if a call was slow enough to yield, so this looks at the best case;
    // exact counts are checked in the next test.)
    let restored = seen
        .iter()
        .map(|s| s.first_v2_count.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    assert!(
        restored > EACH_SIDE,
        "v2 did not start from v1's state ({restored})"
    );
    stop.store(true, Ordering::Relaxed);
    for (me, client) in clients.into_iter().enumerate() {
        let answered = tokio::time::timeout(WAIT, client)
            .await
            .expect("client finishes")
            .expect("client checks pass");
        let s = &seen[me];
        assert_eq!(
            answered,
            s.v1.load(Ordering::Relaxed) + s.v2.load(Ordering::Relaxed)
        );
    }
    pier.stop().await;
}

#[tokio::test]
async fn snapshot_and_restore_carry_guest_state_only_between_versions_that_export_them() {
    let dir = scratch_dir("snapshot-restore");
    let plugin = install(&dir, V1);
    // One worker: one instance, so the count is exact.
    let pier = Deployed::start(&dir, &one_listener(1)).await;
    let mut client = pier.client("live").await;
    assert_eq!(client.ask(b"a").await, b"v1 #1: a");
    assert_eq!(client.ask(b"b").await, b"v1 #2: b");

    let files = HashSet::from([plugin.clone()]);
    install(&dir, V2);
    assert_eq!(pier.deployer.reload_files(&files).await.swapped, ["live"]);
    assert_eq!(client.ask(b"c").await, b"v2 #3: c", "state carried to v2");

    // The echo plugin has no state-handler: the count is dropped, not forced on it.
    install_bytes(&dir, &support::echo_wasm());
    assert_eq!(pier.deployer.reload_files(&files).await.swapped, ["live"]);
    assert_eq!(client.ask(b"d").await, b"Echo: d");
    install(&dir, V1);
    assert_eq!(pier.deployer.reload_files(&files).await.swapped, ["live"]);
    assert_eq!(
        client.ask(b"e").await,
        b"v1 #1: e",
        "nothing to restore from echo"
    );

    // Reloading the version already serving changes nothing.
    assert!(pier.deployer.reload_files(&files).await.swapped.is_empty());
    assert_eq!(client.ask(b"f").await, b"v1 #2: f");
    pier.stop().await;
}

fn tenants(a_plugin: &str, greeting: &str, with_c: bool, with_b: bool) -> String {
    let mut toml = format!(
        r#"
[[listener]]
name = "a"
address = "127.0.0.1:0"
plugin = "{a_plugin}"
framing = "lines"

[listener.limits]
memory = "16MiB"

[listener.plugin_config]
greeting = "{greeting}"
"#
    );
    if with_b {
        toml.push_str(
            r#"
[[listener]]
name = "b"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"

[listener.limits]
memory = "16MiB"
"#,
        );
    }
    if with_c {
        toml.push_str(
            r#"
[[listener]]
name = "c"
address = "127.0.0.1:0"
plugin = "v1.wasm"
framing = "lines"

[listener.limits]
memory = "16MiB"
"#,
        );
    }
    toml
}

#[tokio::test]
async fn a_config_reload_adds_a_listener_and_changes_another_plugin_while_clients_stay_connected() {
    let dir = scratch_dir("config-reload");
    std::fs::copy(guest_file(V1), dir.join("v1.wasm")).expect("copy v1");
    std::fs::copy(guest_file(V2), dir.join("v2.wasm")).expect("copy v2");
    let pier = Deployed::start(&dir, &tenants("v1.wasm", "hi", false, true)).await;
    let mut a = pier.client("a").await;
    let mut b = pier.client("b").await;
    assert!(a.ask(b"one").await.starts_with(b"v1 #"));
    assert_eq!(a.ask(b"config greeting").await, b"hi");
    assert_eq!(b.ask(b"one").await, b"Echo: one");

    // a: new plugin and plugin_config (hot swap); b: unchanged; c: new.
    let report = pier
        .reload_config(&tenants("v2.wasm", "hello", true, true))
        .await;
    assert_eq!(report.added, ["c"]);
    assert_eq!(report.swapped, ["a"]);
    assert!(report.removed.is_empty() && report.restarted.is_empty());
    assert!(
        a.ask(b"two").await.starts_with(b"v2 #"),
        "same connection, new plugin"
    );
    assert_eq!(a.ask(b"config greeting").await, b"hello");
    assert_eq!(b.ask(b"two").await, b"Echo: two");
    let mut c = pier.client("c").await;
    assert!(c.ask(b"new").await.starts_with(b"v1 #"));

    // A config naming a missing plugin is refused as a whole: nothing changes.
    std::fs::write(
        dir.join("pier.toml"),
        tenants("missing.wasm", "x", true, true),
    )
    .unwrap();
    let refused = pier.deployer.reload().await;
    let err = format!("{:#}", refused.expect_err("a missing plugin is refused"));
    assert!(err.contains("missing.wasm"), "{err}");
    assert!(a.ask(b"three").await.starts_with(b"v2 #"));

    // Removing b drains its connection; a and c carry on.
    let report = pier
        .reload_config(&tenants("v2.wasm", "hello", true, false))
        .await;
    assert_eq!(report.removed, ["b"]);
    assert!(
        b.closed_by_server().await,
        "a removed listener's clients are closed"
    );
    assert!(a.ask(b"four").await.starts_with(b"v2 #"));
    assert!(c.ask(b"again").await.starts_with(b"v1 #"));
    pier.stop().await;
}

#[tokio::test]
async fn a_changed_limit_restarts_the_listener_and_open_connections_carry_on() {
    let dir = scratch_dir("restart-listener");
    // A fixed port, so the restarted listener must rebind the address the old one held.
    let port = support::ports::reserved_port();
    let toml = |write_queue: usize| {
        format!(
            r#"
[[listener]]
name = "echo"
address = "127.0.0.1:{port}"
plugin = "echo"
framing = "lines"

[listener.limits]
memory = "16MiB"
write_queue = {write_queue}
"#
        )
    };
    let pier = Deployed::start(&dir, &toml(64)).await;
    let mut early = pier.client("echo").await;
    assert_eq!(early.ask(b"x").await, b"Echo: x");
    let report = pier.reload_config(&toml(128)).await;
    assert_eq!(report.restarted, ["echo"]);
    assert_eq!(early.ask(b"y").await, b"Echo: y", "kept its connection");
    assert_eq!(pier.addr("echo").port(), port);
    let mut late = pier.client("echo").await;
    assert_eq!(late.ask(b"z").await, b"Echo: z");
    pier.stop().await;
}

#[tokio::test]
async fn a_plugin_asking_for_an_ungranted_capability_is_refused_naming_it() {
    let dir = scratch_dir("ungranted");
    let plugin = install(&dir, V1);
    let pier = Deployed::start(&dir, &one_listener(1)).await;
    let mut client = pier.client("live").await;
    assert_eq!(client.ask(b"a").await, b"v1 #1: a");

    // The greedy plugin imports `wasi:keyvalue/store`, which no listener grants.
    install(&dir, "pier_greedy.wasm");
    let files = HashSet::from([plugin.clone()]);
    assert!(pier.deployer.reload_files(&files).await.swapped.is_empty());
    assert_eq!(
        client.ask(b"b").await,
        b"v1 #2: b",
        "the old version keeps serving"
    );
    let refused = pier.deployer.reload().await;
    let err = format!("{:#}", refused.expect_err("refused"));
    assert!(
        err.contains("does not grant: wasi:keyvalue/store@0.2.0-draft"),
        "{err}"
    );
    pier.stop().await;

    // Nor does it start.
    let dir = scratch_dir("ungranted-start");
    install(&dir, "pier_greedy.wasm");
    let path = dir.join("pier.toml");
    std::fs::write(&path, one_listener(1)).unwrap();
    let config = pier::Config::load(&path).unwrap();
    let runtime = support::runtime();
    let server = pier::Server::new(runtime.clone(), &Default::default()).unwrap();
    let deployer = pier::Deployer::new(runtime, server.clone(), config, Some(path));
    let err = format!("{:#}", deployer.start().await.expect_err("refused"));
    assert!(err.contains("wasi:keyvalue/store@0.2.0-draft"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_listener_that_could_not_start_is_started_by_the_next_reload() {
    let dir = scratch_dir("retry-start");
    install(&dir, V1);
    let pier = Deployed::start(&dir, &one_listener(1)).await;
    // Another process holds the port the new listener wants.
    let port = support::ports::reserved_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let with_late = format!(
        "{}\n[[listener]]\nname = \"late\"\naddress = \"127.0.0.1:{port}\"\nplugin = \"echo\"\n\
         framing = \"lines\"\n[listener.limits]\nmemory = \"16MiB\"\n",
        one_listener(1)
    );
    let report = pier.reload_config(&with_late).await;
    assert!(report.added.is_empty(), "{report:?}");
    assert!(pier.deployer.server().listener("late").is_none());
    drop(squatter);
    // Same config again: the listener is not running, so it is started, not skipped.
    let report = pier.reload_config(&with_late).await;
    assert_eq!(report.added, ["late"]);
    let mut client = pier.client("late").await;
    assert_eq!(client.ask(b"here").await, b"Echo: here");
    pier.stop().await;
}
