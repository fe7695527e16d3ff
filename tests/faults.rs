//! Fault isolation: a guest that traps, loops, eats memory or panics costs exactly one
//! connection (the one whose frame caused it), and everyone else on the same worker — and so on
//! the same, now recreated, instance — keeps being served.

mod common;

use common::{Options, TestServer, faulty_wasm};
use pier::framing::Framing;

async fn single_worker_server() -> TestServer {
    TestServer::start(
        &faulty_wasm(),
        Options {
            framing: Framing::Lines,
            workers: 1,
            ..Options::default()
        },
    )
    .await
}

async fn only_the_offender_is_closed(magic: &[u8]) {
    let server = single_worker_server().await;
    let mut bystander = server.client().await;
    assert_eq!(bystander.ask(b"before").await, b"Echo: before");

    let mut offender = server.client().await;
    // A reply owed before the fault is still delivered; frames after it are not handled.
    let mut wire = offender.encode(b"first");
    wire.extend(offender.encode(magic));
    wire.extend(offender.encode(b"never answered"));
    offender.write_raw(&wire).await;
    assert_eq!(offender.recv().await.unwrap(), b"Echo: first");
    assert!(
        offender.closed_by_server().await,
        "the offending connection is closed"
    );

    // Same worker, so this runs on the replacement instance.
    assert_eq!(bystander.ask(b"after").await, b"Echo: after");
    let mut newcomer = server.client().await;
    assert_eq!(newcomer.ask(b"new").await, b"Echo: new");
    server.stop().await;
}

#[tokio::test]
async fn trap_closes_only_its_connection() {
    only_the_offender_is_closed(b"trap").await;
}

#[tokio::test]
async fn endless_loop_is_stopped_by_the_call_deadline() {
    only_the_offender_is_closed(b"loop").await;
}

#[tokio::test]
async fn memory_hog_is_stopped_by_the_memory_limit() {
    only_the_offender_is_closed(b"oom").await;
}

#[tokio::test]
async fn rust_panic_in_the_guest_is_a_trap_not_a_host_crash() {
    only_the_offender_is_closed(b"panic").await;
}

#[tokio::test]
async fn repeated_faults_keep_being_recovered() {
    let server = single_worker_server().await;
    let mut bystander = server.client().await;
    for round in 0..10 {
        let mut offender = server.client().await;
        offender
            .send(if round % 2 == 0 { b"trap" } else { b"loop" })
            .await;
        assert!(offender.closed_by_server().await);
        let msg = format!("round {round}");
        assert_eq!(
            bystander.ask(msg.as_bytes()).await,
            common::echoed(msg.as_bytes())
        );
    }
    server.stop().await;
}
