//! Per-listener limits from pier.toml over real sockets: idle timeout, connections and new
//! connections per client address, the slow-consumer policy during a broadcast flood, and
//! tenants that never see each other's connections.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use pier::Framing;
use support::{Client, Deployed, guest_file, scratch_dir};
use tokio::net::TcpSocket;

/// A pier.toml with one listener `name` serving `plugin`, plus `limits` lines.
fn listener(name: &str, plugin: &str, limits: &str) -> String {
    format!(
        r#"
[[listener]]
name = "{name}"
address = "127.0.0.1:0"
plugin = "{plugin}"
framing = "lines"

[listener.limits]
memory = "16MiB"
{limits}
"#
    )
}

/// Starts pier with the test kit plugin copied into the scratch folder.
async fn with_testkit(test: &str, toml: &str) -> Deployed {
    let dir = scratch_dir(test);
    std::fs::copy(guest_file("pier_testkit.wasm"), dir.join("testkit.wasm")).expect("copy");
    Deployed::start(&dir, toml).await
}

/// Connects to `addr` from source address `from` (any 127.x address works on loopback).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind the source address");
    let stream = socket.connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    Client::from_stream(stream, Framing::Lines)
}

#[tokio::test]
async fn idle_connections_are_closed_with_idle_timeout_and_busy_ones_are_not() {
    let pier = with_testkit(
        "idle-timeout",
        &listener("kit", "testkit.wasm", r#"idle_timeout = "1s""#),
    )
    .await;
    let mut busy = pier.client("kit").await;
    assert!(busy.recv().await.unwrap().starts_with(b"welcome"));
    let mut idle = pier.client("kit").await;
    let welcome = String::from_utf8(idle.recv().await.unwrap()).unwrap();
    let idle_id = welcome.strip_prefix("welcome ").expect("welcome ID");
    let left = format!("left {idle_id} idle-timeout");

    // `busy` talks every 50 ms (a deliberate pace: twenty times within the timeout, so only a
    // stall of most of a second could make it look idle) until the idle client's departure is
    // announced by the plugin's on-close, and for at least two timeouts. When the
    // announcement comes is up to the machine; it is waited for, not assumed.
    let started = tokio::time::Instant::now();
    let mut announced = false;
    let mut i = 0;
    while !announced || started.elapsed() < Duration::from_secs(2) {
        assert!(
            started.elapsed() < support::WAIT,
            "the idle client was never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let msg = format!("ping {i}");
        i += 1;
        let reply = busy.ask(msg.as_bytes()).await;
        if reply.starts_with(b"left ") {
            assert!(!announced, "announced twice");
            assert_eq!(reply, left.as_bytes());
            announced = true;
            assert_eq!(busy.recv().await.unwrap(), support::echoed(msg.as_bytes()));
        } else {
            assert_eq!(reply, support::echoed(msg.as_bytes()));
        }
    }
    assert!(idle.closed_by_server().await, "the idle client was closed");
    pier.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_limited_per_client_address() {
    let pier = Deployed::start(
        &scratch_dir("per-address"),
        &listener("echo", "echo", "max_connections_per_address = 2"),
    )
    .await;
    let addr = pier.addr("echo");
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let mut a = connect_from(one, addr).await;
    let mut b = connect_from(one, addr).await;
    assert_eq!(a.ask(b"a").await, b"Echo: a");
    assert_eq!(b.ask(b"b").await, b"Echo: b");
    let mut third = connect_from(one, addr).await;
    assert!(
        third.closed_by_server().await,
        "a third from one address is closed"
    );
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    assert_eq!(
        other.ask(b"o").await,
        b"Echo: o",
        "another address is served"
    );
    assert_eq!(pier.deployer.server().refused("echo"), Some(1));

    drop(a);
    // Once one closes, the address may connect again — once the server has noticed, which is
    // only eventually true; until then a new connection is refused cleanly.
    support::eventually("a freed slot to be usable again", async || {
        let mut again = connect_from(one, addr).await;
        again.send(b"again").await;
        again.recv().await.is_some()
    })
    .await;
    pier.stop().await;
}

#[tokio::test]
async fn a_flood_of_new_connections_from_one_address_is_rate_limited() {
    let pier = Deployed::start(
        &scratch_dir("rate-limit"),
        &listener("echo", "echo", "new_connections_per_second = 5"),
    )
    .await;
    let addr = pier.addr("echo");
    let flooder = Ipv4Addr::new(127, 0, 0, 3);
    // Connect all 30 first, so the flood is as fast as the machine allows, then see which were
    // kept. The bucket holds 5 and refills 5 a second, so however long the flood took, no more
    // than 5 + 5 × its duration can have been admitted.
    let started = std::time::Instant::now();
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(connect_from(flooder, addr).await);
    }
    let mut served = 0;
    let mut closed = 0;
    let mut open = Vec::new();
    for (i, mut c) in flood.into_iter().enumerate() {
        let msg = format!("n{i}");
        c.send(msg.as_bytes()).await;
        match c.recv().await {
            Some(reply) => {
                assert_eq!(reply, support::echoed(msg.as_bytes()));
                served += 1;
                open.push(c);
            }
            None => closed += 1,
        }
    }
    // Every admission happened before the last reply was read.
    let allowed = 5.0 + 5.0 * started.elapsed().as_secs_f64();
    assert!(served >= 5, "the burst allowance is served ({served})");
    assert!(
        f64::from(served) <= allowed.floor(),
        "the flood is refused ({closed} closed, {served} served, {allowed:.1} allowed)"
    );
    // Another address is not affected, and the flooder's open connections keep working.
    let mut calm = connect_from(Ipv4Addr::new(127, 0, 0, 4), addr).await;
    assert_eq!(calm.ask(b"calm").await, b"Echo: calm");
    assert_eq!(open[0].ask(b"still").await, b"Echo: still");
    // The bucket refills (at 5 a second): the flooder is eventually let in again.
    support::eventually("the flooder to be admitted again", async || {
        let mut later = connect_from(flooder, addr).await;
        later.send(b"later").await;
        match later.recv().await {
            Some(reply) => {
                assert_eq!(reply, b"Echo: later");
                true
            }
            None => false,
        }
    })
    .await;
    pier.stop().await;
}

/// Floods broadcasts from `fast` while `slow` never reads; returns the `reached N` counts seen
/// and any other frames `fast` received meanwhile (the plugin's `left ...` notices).
async fn broadcast_flood(fast: &mut Client) -> (Vec<u32>, Vec<String>) {
    let payload = "x".repeat(64 * 1024);
    let mut reached = Vec::new();
    let mut notices = Vec::new();
    for _ in 0..600 {
        fast.send(format!("broadcast {payload}").as_bytes()).await;
        loop {
            let text = String::from_utf8(fast.recv().await.expect("fast is served")).unwrap();
            match text.strip_prefix("reached ") {
                Some(n) => {
                    reached.push(n.parse().unwrap());
                    break;
                }
                None => notices.push(text),
            }
        }
    }
    (reached, notices)
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_under_the_close_policy() {
    let pier = with_testkit(
        "slow-close",
        &listener(
            "kit",
            "testkit.wasm",
            "write_queue = 16\nslow_consumer = \"close\"",
        ),
    )
    .await;
    let mut fast = pier.client("kit").await;
    assert!(fast.recv().await.unwrap().starts_with(b"welcome"));
    let mut slow = pier.client("kit").await;
    assert!(slow.recv().await.unwrap().starts_with(b"welcome"));

    // ~38 MiB of broadcasts: far more than socket buffers and a 16-frame queue hold.
    let (reached, notices) = broadcast_flood(&mut fast).await;
    assert!(
        reached.contains(&0),
        "the slow reader stopped taking frames"
    );
    let last = reached.iter().rposition(|&n| n == 1).unwrap_or(0);
    assert!(
        reached[last + 1..].iter().all(|&n| n == 0),
        "once evicted it never takes a frame again"
    );
    assert!(slow.closed_by_server().await, "the slow reader was closed");
    // Only the fast client remains: the slow one left `peers` before its client saw the close.
    let mut peers = fast.ask(b"peers").await;
    let mut notices = notices;
    if peers.starts_with(b"left ") {
        notices.push(String::from_utf8(peers).unwrap());
        peers = fast.recv().await.unwrap();
    }
    assert_eq!(peers, b"1");
    // The plugin heard why. Its on-close runs after the client saw the close, so the notice
    // may still be on its way: wait for it.
    if notices.is_empty() {
        notices.push(String::from_utf8(fast.recv().await.expect("the left notice")).unwrap());
    }
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].ends_with(" slow-consumer"), "{notices:?}");
    pier.stop().await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_loses_frames_but_stays_under_the_drop_policy() {
    let pier = with_testkit(
        "slow-drop",
        &listener(
            "kit",
            "testkit.wasm",
            "write_queue = 16\nslow_consumer = \"drop\"",
        ),
    )
    .await;
    let mut fast = pier.client("kit").await;
    assert!(fast.recv().await.unwrap().starts_with(b"welcome"));
    let mut slow = pier.client("kit").await;
    assert!(slow.recv().await.unwrap().starts_with(b"welcome"));
    let (reached, notices) = broadcast_flood(&mut fast).await;
    assert!(
        reached.contains(&0),
        "frames were dropped for the slow reader"
    );
    assert!(notices.is_empty(), "nobody left: {notices:?}");

    // The slow reader is still connected: it gets what fit, then the answer to its question.
    slow.send(b"peers").await;
    let mut broadcasts = 0;
    loop {
        let frame = slow.recv().await.expect("still connected");
        if frame.starts_with(b"x") {
            broadcasts += 1;
            continue;
        }
        assert_eq!(frame, b"2");
        break;
    }
    assert!(
        broadcasts > 0 && broadcasts < 600,
        "{broadcasts} of 600 delivered"
    );
    pier.stop().await;
}

#[tokio::test]
async fn tenants_never_see_each_others_connections() {
    let toml = format!(
        "{}{}",
        listener("left", "testkit.wasm", ""),
        listener("right", "testkit.wasm", "")
    );
    let pier = with_testkit("tenants", &toml).await;
    let mut l1 = pier.client("left").await;
    let mut l2 = pier.client("left").await;
    let mut r1 = pier.client("right").await;
    for c in [&mut l1, &mut l2, &mut r1] {
        assert!(c.recv().await.unwrap().starts_with(b"welcome"));
    }
    assert_eq!(l1.ask(b"peers").await, b"2");
    assert_eq!(r1.ask(b"peers").await, b"1");
    assert_eq!(l1.ask(b"broadcast hello").await, b"reached 1");
    assert_eq!(l2.recv().await.unwrap(), b"hello");
    // The right tenant got nothing: its next frame is the answer to its own question.
    assert_eq!(
        r1.ask(b"whoami").await.split(|&b| b == b' ').nth(2),
        Some(&b"right"[..])
    );
    // Sending to another tenant's connection id fails as if it did not exist.
    let r1_id = String::from_utf8(r1.ask(b"whoami").await).unwrap();
    let r1_id = r1_id.split(' ').next().unwrap();
    assert_eq!(
        l1.ask(format!("send {r1_id} psst").as_bytes()).await,
        b"unknown-connection"
    );
    pier.stop().await;
}
