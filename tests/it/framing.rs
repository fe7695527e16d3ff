//! Framing over real loopback sockets: every framing, frames split and merged across writes,
//! the frame limit, clients that vanish mid-frame, and many concurrent clients.

use crate::support;

use std::time::Duration;

use pier::Framing;
use support::{Client, Options, TestServer, echo_wasm, echoed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn opts(framing: Framing) -> Options {
    Options {
        framing,
        ..Options::default()
    }
}

#[tokio::test]
async fn raw_framing_replies_in_one_write_to_a_plain_read() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::Raw)).await;
    let mut client = server.client().await;
    client.write_raw(b"Hello TCP").await;
    // One read, like kn-sock's recv(1024): the whole reply must be there.
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(support::WAIT, client.stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"Echo: Hello TCP");
    server.stop().await;
}

#[tokio::test]
async fn lines_framing_handles_several_frames_in_one_write_and_crlf() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::Lines)).await;
    let mut client = server.client().await;
    client.write_raw(b"one\ntwo\r\nthree\n").await;
    assert_eq!(client.recv().await.unwrap(), b"Echo: one");
    assert_eq!(client.recv().await.unwrap(), b"Echo: two");
    assert_eq!(client.recv().await.unwrap(), b"Echo: three");
    server.stop().await;
}

#[tokio::test]
async fn length_prefixed_framing_round_trips_binary_frames() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::LengthPrefixed)).await;
    let mut client = server.client().await;
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(client.ask(&binary).await, echoed(&binary));
    assert_eq!(client.ask(b"").await, b"Echo: ");
    // Check the bytes on the wire: a 4-byte big-endian length, then the body.
    client.write_raw(&[0, 0, 0, 2, b'h', b'i']).await;
    let mut head = [0u8; 4];
    client.stream.read_exact(&mut head).await.unwrap();
    assert_eq!(u32::from_be_bytes(head), 8);
    let mut body = [0u8; 8];
    client.stream.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"Echo: hi");
    server.stop().await;
}

#[tokio::test]
async fn a_frame_sent_one_byte_at_a_time_is_one_frame() {
    for framing in [Framing::Lines, Framing::LengthPrefixed] {
        let server = TestServer::start(&echo_wasm(), opts(framing)).await;
        let mut client = server.client().await;
        let wire = client.encode(b"slowly but surely");
        for byte in wire {
            client.write_raw(&[byte]).await;
            // Pacing, not a wait: each byte in its own segment. A slow machine may merge some,
            // which the test tolerates (it is still one frame).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            client.recv().await.unwrap(),
            b"Echo: slowly but surely",
            "{framing}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn many_frames_in_one_write_all_answered_in_order() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::LengthPrefixed)).await;
    let mut client = server.client().await;
    let mut wire = Vec::new();
    for i in 0..500 {
        wire.extend(client.encode(format!("frame {i}").as_bytes()));
    }
    client.write_raw(&wire).await;
    for i in 0..500 {
        assert_eq!(
            client.recv().await.unwrap(),
            echoed(format!("frame {i}").as_bytes())
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_length_prefix_closes_only_that_connection_without_allocating() {
    let server = TestServer::start(
        &echo_wasm(),
        Options {
            framing: Framing::LengthPrefixed,
            max_frame: 1024,
            ..Options::default()
        },
    )
    .await;
    let mut bystander = server.client().await;
    assert_eq!(bystander.ask(b"before").await, b"Echo: before");

    let mut bad = server.client().await;
    // Claims 4 GiB: must be refused from the header alone.
    bad.write_raw(&0xFFFF_FFFFu32.to_be_bytes()).await;
    assert!(
        bad.closed_by_server().await,
        "an oversized prefix closes the connection"
    );

    let mut just_over = server.client().await;
    just_over.send(&vec![b'x'; 1025]).await;
    assert!(just_over.closed_by_server().await);

    // At the limit, both ways: replies are held to the same limit (a longer one is a
    // `reply-too-large` fault), so the largest frame echo can answer is 1018 bytes, answered
    // with exactly 1024.
    let mut at_limit = server.client().await;
    assert_eq!(
        at_limit.ask(&vec![b'y'; 1018]).await,
        echoed(&vec![b'y'; 1018])
    );
    assert_eq!(bystander.ask(b"after").await, b"Echo: after");
    server.stop().await;
}

#[tokio::test]
async fn oversized_line_closes_the_connection() {
    let server = TestServer::start(
        &echo_wasm(),
        Options {
            framing: Framing::Lines,
            max_frame: 100,
            ..Options::default()
        },
    )
    .await;
    let mut bad = server.client().await;
    // No newline in sight, and more than the limit.
    bad.write_raw(&[b'z'; 4096]).await;
    assert!(bad.closed_by_server().await);
    let mut good = server.client().await;
    assert_eq!(good.ask(b"fine").await, b"Echo: fine");
    server.stop().await;
}

#[tokio::test]
async fn client_reset_mid_frame_does_not_disturb_the_server() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::LengthPrefixed)).await;
    for _ in 0..20 {
        let client = server.client().await;
        let std_stream = client.stream.into_std().unwrap();
        let socket = socket2::Socket::from(std_stream);
        socket.set_nonblocking(false).unwrap();
        // Half a frame, then an RST (linger 0) instead of a FIN.
        std::io::Write::write_all(&mut &socket, &[0, 0, 0, 50, b'a', b'b']).unwrap();
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(socket);
    }
    let mut client = server.client().await;
    assert_eq!(client.ask(b"still here").await, b"Echo: still here");
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_clients_each_get_their_own_replies_in_order() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::Lines)).await;
    let mut tasks = Vec::new();
    for c in 0..200 {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr, Framing::Lines).await;
            for i in 0..20 {
                let msg = format!("client {c} message {i}");
                client.send(msg.as_bytes()).await;
                // Pipeline a little: read every second reply late.
                if i % 2 == 1 {
                    let prev = format!("client {c} message {}", i - 1);
                    assert_eq!(client.recv().await.unwrap(), echoed(prev.as_bytes()));
                    assert_eq!(client.recv().await.unwrap(), echoed(msg.as_bytes()));
                }
            }
            client.stream.shutdown().await.unwrap();
            assert!(
                client.recv().await.is_none(),
                "server closes after the client's FIN"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn a_final_line_without_newline_is_answered_after_half_close() {
    let server = TestServer::start(&echo_wasm(), opts(Framing::Lines)).await;
    let mut client = server.client().await;
    client.write_raw(b"no newline").await;
    client.stream.shutdown().await.unwrap();
    assert_eq!(client.recv().await.unwrap(), b"Echo: no newline");
    assert!(client.recv().await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn clients_beyond_max_connections_get_a_clean_close_and_others_keep_being_served() {
    let server = TestServer::start(
        &echo_wasm(),
        Options {
            framing: Framing::Lines,
            max_connections: 2,
            ..Options::default()
        },
    )
    .await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    assert_eq!(a.ask(b"a").await, b"Echo: a");
    assert_eq!(b.ask(b"b").await, b"Echo: b");

    // A third client is accepted and closed at once: it reads end-of-stream, it does not hang.
    let mut c = server.client().await;
    assert!(
        c.closed_by_server().await,
        "refused client was left hanging"
    );
    assert_eq!(a.ask(b"still").await, b"Echo: still");

    // Once a slot frees, a new client is served again.
    a.stream.shutdown().await.unwrap();
    assert!(a.recv().await.is_none());
    // The slot frees once the server has seen `a` close, which is only eventually true: until
    // then `d` is refused cleanly (closed, never hanging), so try again.
    let mut d =
        support::eventually_some("a slot to free after the first client left", async || {
            let mut d = server.client().await;
            d.send(b"d").await;
            let reply = d.recv().await?;
            assert_eq!(reply, b"Echo: d");
            Some(d)
        })
        .await;
    assert_eq!(d.ask(b"again").await, b"Echo: again");
    assert_eq!(b.ask(b"b2").await, b"Echo: b2");
    server.stop().await;
}
