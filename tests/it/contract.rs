//! The plugin contract over real sockets, driven by the `guests/test/testkit` plugin: greetings and
//! refusals from `on-open`, every `connections` import (`send`, `broadcast`, `close`, `peers`,
//! `lookup`), reply ordering, and `on-close` with the right reason.

use crate::support;

use pier::Framing;
use support::{Client, Options, TestServer};
use tokio::io::AsyncWriteExt;

fn testkit_wasm() -> Vec<u8> {
    std::fs::read(pier::builtin::guest_path("pier_testkit.wasm"))
        .expect("the build produced pier_testkit.wasm")
}

async fn server() -> TestServer {
    TestServer::start(
        &testkit_wasm(),
        Options {
            framing: Framing::Lines,
            workers: 2,
            ..Options::default()
        },
    )
    .await
}

/// Connects and reads the greeting; returns the client and its connection id.
async fn join(server: &TestServer) -> (Client, u64) {
    let mut client = server.client().await;
    let greeting = String::from_utf8(client.recv().await.expect("greeting")).unwrap();
    let id = greeting
        .strip_prefix("welcome ")
        .unwrap_or_else(|| panic!("unexpected greeting {greeting:?}"))
        .parse()
        .unwrap();
    (client, id)
}

async fn ask(client: &mut Client, line: &str) -> String {
    String::from_utf8(client.ask(line.as_bytes()).await).unwrap()
}

async fn next(client: &mut Client) -> String {
    String::from_utf8(client.recv().await.expect("a frame")).unwrap()
}

#[tokio::test]
async fn on_open_greets_and_lookup_describes_the_peer() {
    let server = server().await;
    let (mut a, id) = join(&server).await;
    let local = a.stream.local_addr().unwrap();
    assert_eq!(ask(&mut a, "whoami").await, format!("{id} {local} test"));
    let (_b, id_b) = join(&server).await;
    assert!(id_b > id, "ids are never reused and increase");
    assert_eq!(ask(&mut a, "peers").await, "2");
    server.stop().await;
}

#[tokio::test]
async fn send_reaches_another_connection_on_any_worker() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let (mut b, id_b) = join(&server).await;
    let (mut c, id_c) = join(&server).await;
    assert_eq!(ask(&mut a, &format!("send {id_b} hello b")).await, "sent");
    assert_eq!(ask(&mut a, &format!("send {id_c} hello c")).await, "sent");
    assert_eq!(next(&mut b).await, "hello b");
    assert_eq!(next(&mut c).await, "hello c");
    assert_eq!(
        ask(&mut a, "send 999999999 nobody").await,
        "unknown-connection"
    );
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_but_the_sender() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let (mut b, _) = join(&server).await;
    let (mut c, _) = join(&server).await;
    assert_eq!(ask(&mut a, "broadcast news").await, "reached 2");
    assert_eq!(next(&mut b).await, "news");
    assert_eq!(next(&mut c).await, "news");
    // Nothing extra arrived at the sender: its next reply is the answer to its next frame.
    assert_eq!(ask(&mut a, "ping").await, "Echo: ping");
    server.stop().await;
}

#[tokio::test]
async fn frames_sent_to_self_during_a_call_precede_its_reply() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    a.send(b"ordered").await;
    assert_eq!(next(&mut a).await, "first");
    assert_eq!(next(&mut a).await, "second");
    server.stop().await;
}

#[tokio::test]
async fn close_self_delivers_the_reply_then_closes_and_on_close_says_plugin_closed() {
    let server = server().await;
    let (mut watcher, _) = join(&server).await;
    let (mut quitter, id) = join(&server).await;
    // Frames after the closing one are not handled.
    quitter.write_raw(b"close\nEcho me not\n").await;
    assert_eq!(next(&mut quitter).await, "bye");
    assert!(quitter.recv().await.is_none(), "closed after the reply");
    assert_eq!(next(&mut watcher).await, format!("left {id} plugin-closed"));
    server.stop().await;
}

#[tokio::test]
async fn close_another_connection() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let (mut b, id_b) = join(&server).await;
    a.send(format!("close {id_b}").as_bytes()).await;
    assert!(b.recv().await.is_none());
    // B's on-close runs on its own worker and may queue its note before A's reply is written.
    let mut got = [next(&mut a).await, next(&mut a).await];
    got.sort();
    assert_eq!(
        got,
        [
            "closed true".to_string(),
            format!("left {id_b} plugin-closed")
        ]
    );
    // Closing began before B's client saw the end: B is no longer open, immediately.
    assert_eq!(ask(&mut a, &format!("close {id_b}")).await, "closed false");
    assert_eq!(ask(&mut a, "peers").await, "1");
    // A send is refused at once, but which refusal is only eventually settled (see `send` in
    // wit/plugin.wit): `closing` until B's on-close has returned and B has left the registry,
    // `unknown-connection` from then on, never anything else.
    let send_late = format!("send {id_b} late");
    let first = ask(&mut a, &send_late).await;
    assert!(
        first == "closing" || first == "unknown-connection",
        "{first}"
    );
    support::eventually("B to leave the registry", async || {
        let reply = ask(&mut a, &send_late).await;
        assert!(
            reply == "closing" || reply == "unknown-connection",
            "{reply}"
        );
        reply == "unknown-connection"
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn on_close_reports_peer_closed_when_the_client_leaves() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let (mut b, id_b) = join(&server).await;
    b.stream.shutdown().await.unwrap();
    assert!(b.recv().await.is_none());
    assert_eq!(next(&mut a).await, format!("left {id_b} peer-closed"));
    assert_eq!(
        ask(&mut a, "peers").await,
        "1",
        "the registry forgot the closed connection"
    );
    server.stop().await;
}

#[tokio::test]
async fn on_open_can_refuse_with_a_message() {
    let server = server().await;
    let mut members = Vec::new();
    for _ in 0..5 {
        members.push(join(&server).await);
    }
    let mut extra = server.client().await;
    assert_eq!(next(&mut extra).await, "server full");
    assert!(
        extra.recv().await.is_none(),
        "a refused connection is closed"
    );

    // Make room; a newcomer is welcome again. The refused one never got an on-close.
    let (mut leaving, leaving_id) = members.pop().unwrap();
    leaving.stream.shutdown().await.unwrap();
    assert!(leaving.recv().await.is_none());
    assert_eq!(
        next(&mut members[0].0).await,
        format!("left {leaving_id} peer-closed")
    );
    let (_newcomer, _) = join(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn guest_log_calls_return_and_shutdown_closes_every_connection() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let (mut b, _) = join(&server).await;
    assert_eq!(ask(&mut a, "log hello from the guest").await, "logged");
    server.stop().await;
    // Drained and closed; anything still delivered is another connection's `left ID shutdown`.
    for client in [&mut a, &mut b] {
        while let Some(frame) = client.recv().await {
            let text = String::from_utf8(frame).unwrap();
            assert!(
                text.starts_with("left ") && text.ends_with(" shutdown"),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn timers_fire_once_or_periodically_and_can_be_cancelled() {
    let server = server().await;
    let (mut a, _) = join(&server).await;
    let reply = ask(&mut a, "after 20").await;
    let one_shot: u64 = reply.strip_prefix("timer ").expect(&reply).parse().unwrap();
    assert_eq!(next(&mut a).await, format!("fired {one_shot}"));

    let reply = ask(&mut a, "every 10").await;
    let periodic: u64 = reply.strip_prefix("timer ").expect(&reply).parse().unwrap();
    for n in 1..=3 {
        assert_eq!(next(&mut a).await, format!("tick {periodic} {n}"));
    }
    // Cancelled by the plugin after the third tick: the next frame is the answer to a ping.
    // Not a wait for anything: five more periods in which a wrong fourth tick would be sent
    // and then caught. A slow machine can only make this check less sensitive, never fail it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(ask(&mut a, "ping").await, "Echo: ping");
    server.stop().await;
}
