//! The built-in plugins driven by real clients over loopback: chat with three clients, the
//! length-prefixed JSON protocol (good and bad input, pipelining, byte-at-a-time),
//! the stats plugin's moving figures. Each chat and lpjson scenario also runs with instances
//! replaced after every call, which must change nothing a client can see (state is in the host).
//! HTTP with curl and Python lives in `tests/http.rs`.

use crate::support;

use std::time::Duration;

use pier::Framing;
use serde_json::{Value, json};
use support::{Client, Options, TestServer, builtin_wasm};
use tokio::io::AsyncWriteExt;

async fn start(plugin: &str, framing: Framing, recycle_after: Option<u64>) -> TestServer {
    TestServer::start(
        &builtin_wasm(plugin),
        Options {
            framing,
            workers: 2,
            recycle_after,
            ..Options::default()
        },
    )
    .await
}

async fn line(client: &mut Client) -> String {
    String::from_utf8(client.recv().await.expect("a line")).expect("utf-8")
}

async fn say(client: &mut Client, text: &str) {
    client.send(text.as_bytes()).await;
}

/// Joins the chat as `name`, checking the greeting and the welcome.
async fn join_chat(server: &TestServer, name: &str) -> Client {
    let mut client = server.client().await;
    assert_eq!(
        line(&mut client).await,
        "Welcome to pier chat! Enter your name:"
    );
    say(&mut client, name).await;
    assert_eq!(
        line(&mut client).await,
        format!("Hello {name}! You can now chat.")
    );
    client
}

async fn chat_scenario(recycle_after: Option<u64>) {
    let server = start("chat", Framing::Lines, recycle_after).await;

    let mut ann = server.client().await;
    assert_eq!(
        line(&mut ann).await,
        "Welcome to pier chat! Enter your name:"
    );
    say(&mut ann, "   ").await;
    assert_eq!(
        line(&mut ann).await,
        "Name cannot be empty. Enter your name:"
    );
    say(&mut ann, &"x".repeat(33)).await;
    assert_eq!(
        line(&mut ann).await,
        "Name too long (at most 32 characters). Enter your name:"
    );
    say(&mut ann, "ann").await;
    assert_eq!(line(&mut ann).await, "Hello ann! You can now chat.");

    let mut bob = server.client().await;
    assert_eq!(
        line(&mut bob).await,
        "Welcome to pier chat! Enter your name:"
    );
    say(&mut bob, "ann").await;
    assert_eq!(
        line(&mut bob).await,
        "The name ann is taken. Enter your name:"
    );
    say(&mut bob, "bob").await;
    assert_eq!(line(&mut bob).await, "Hello bob! You can now chat.");
    assert_eq!(line(&mut ann).await, "bob joined the chat");

    let mut cy = join_chat(&server, "cy").await;
    assert_eq!(line(&mut ann).await, "cy joined the chat");
    assert_eq!(line(&mut bob).await, "cy joined the chat");

    // A message reaches exactly the others.
    say(&mut ann, "hello everyone").await;
    assert_eq!(line(&mut bob).await, "ann: hello everyone");
    assert_eq!(line(&mut cy).await, "ann: hello everyone");
    say(&mut ann, "/list").await;
    assert_eq!(
        line(&mut ann).await,
        "Online (3): ann, bob, cy",
        "ann got no copy of her own line"
    );

    say(&mut bob, "/nick ann").await;
    assert_eq!(line(&mut bob).await, "The name ann is taken.");
    say(&mut bob, "/nick bert").await;
    assert_eq!(line(&mut bob).await, "You are now known as bert.");
    assert_eq!(line(&mut ann).await, "bob is now known as bert");
    assert_eq!(line(&mut cy).await, "bob is now known as bert");
    say(&mut cy, "/dance").await;
    assert!(line(&mut cy).await.starts_with("Unknown command /dance."));

    // cy drops mid-line (RST, no newline): the others hear that cy left, not the fragment.
    cy.write_raw(b"half a sent").await;
    let socket = socket2::Socket::from(cy.stream.into_std().unwrap());
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
    assert_eq!(line(&mut ann).await, "cy left the chat");
    assert_eq!(line(&mut bob).await, "cy left the chat");

    say(&mut ann, "/quit").await;
    assert_eq!(line(&mut ann).await, "Goodbye ann!");
    assert!(ann.recv().await.is_none(), "/quit closes the connection");
    assert_eq!(line(&mut bob).await, "ann left the chat");
    say(&mut bob, "/list").await;
    assert_eq!(line(&mut bob).await, "Online (1): bert");
    server.stop().await;
}

#[tokio::test]
async fn chat_joins_talks_renames_and_leaves() {
    chat_scenario(None).await;
}

#[tokio::test]
async fn chat_is_unchanged_when_every_call_runs_on_a_fresh_instance() {
    chat_scenario(Some(1)).await;
}

fn is_iso_millis(value: &Value) -> bool {
    let Some(s) = value.as_str() else {
        return false;
    };
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23) || c.is_ascii_digit())
}

async fn json_frame(client: &mut Client) -> Value {
    let frame = client.recv().await.expect("a frame");
    serde_json::from_slice(&frame).expect("a JSON reply")
}

async fn ask_json(client: &mut Client, message: Value) -> Value {
    client.send(message.to_string().as_bytes()).await;
    json_frame(client).await
}

async fn lpjson_scenario(recycle_after: Option<u64>) {
    let server = start("lpjson", Framing::LengthPrefixed, recycle_after).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    let a_addr = a.stream.local_addr().unwrap().to_string();

    let pong = ask_json(
        &mut a,
        json!({"type": "ping", "timestamp": "2024-01-01T12:00:00.000Z", "client_info": "test"}),
    )
    .await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["ping_timestamp"], "2024-01-01T12:00:00.000Z");
    assert!(is_iso_millis(&pong["pong_timestamp"]), "{pong}");
    assert_eq!(pong["client_id"], a_addr.as_str());

    let echo = ask_json(
        &mut a,
        json!({"type": "echo", "content": "Hello TCP Server!"}),
    )
    .await;
    assert_eq!(echo["type"], "echo_response");
    assert_eq!(echo["content"], "Hello TCP Server!");
    assert!(is_iso_millis(&echo["timestamp"]));
    assert!(echo["echoed_by"].is_string());

    // A round trip each proves b and c are registered before a broadcasts.
    for other in [&mut b, &mut c] {
        assert_eq!(
            ask_json(other, json!({"type": "ping"})).await["type"],
            "pong"
        );
    }
    let sent = ask_json(&mut a, json!({"type": "broadcast", "content": "to all"})).await;
    assert_eq!(sent["type"], "broadcast_sent");
    assert_eq!(sent["recipients"], 2);
    for other in [&mut b, &mut c] {
        let note = json_frame(other).await;
        assert_eq!(note["type"], "broadcast");
        assert_eq!(note["content"], "to all");
        assert_eq!(note["from"], a_addr.as_str());
        assert!(is_iso_millis(&note["timestamp"]));
    }

    let stats = ask_json(&mut b, json!({"type": "get_stats"})).await;
    assert_eq!(stats["type"], "server_stats");
    assert_eq!(stats["connected_clients"], 3);
    assert!(stats["total_messages"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["uptime_seconds"].is_u64());
    assert!(is_iso_millis(&stats["server_start_time"]) && is_iso_millis(&stats["current_time"]));

    // Every kind of bad input gets an error frame and the connection stays usable.
    let bad_inputs: [&[u8]; 6] = [
        b"",
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        br#"{"content": "no type"}"#,
        br#"{"type": "teleport"}"#,
    ];
    for bad in bad_inputs {
        c.send(bad).await;
        let reply = json_frame(&mut c).await;
        assert_eq!(reply["type"], "error", "for {bad:?}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(
            ask_json(&mut c, json!({"type": "ping"})).await["type"],
            "pong"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn lpjson_speaks_the_seed_004_protocol() {
    lpjson_scenario(None).await;
}

#[tokio::test]
async fn lpjson_is_unchanged_when_every_call_runs_on_a_fresh_instance() {
    lpjson_scenario(Some(1)).await;
}

#[tokio::test]
async fn lpjson_answers_200_pipelined_frames_in_order_and_byte_at_a_time_frames() {
    let server = start("lpjson", Framing::LengthPrefixed, None).await;
    let mut client = server.client().await;
    let mut wire = Vec::new();
    for i in 0..200 {
        wire.extend(client.encode(json!({"type": "echo", "content": i}).to_string().as_bytes()));
    }
    client.write_raw(&wire).await;
    for i in 0..200 {
        let reply = json_frame(&mut client).await;
        assert_eq!(reply["content"], i);
    }

    let one = client.encode(
        json!({"type": "echo", "content": "slow"})
            .to_string()
            .as_bytes(),
    );
    for byte in one {
        client.write_raw(&[byte]).await;
        // Pacing, not a wait: trickles the frame so it arrives in many reads.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(json_frame(&mut client).await["content"], "slow");
    server.stop().await;
}

#[tokio::test]
async fn stats_figures_move_as_traffic_flows() {
    let server = start("stats", Framing::Lines, None).await;
    let mut watcher = server.client().await;
    let mut first: Value = serde_json::from_slice(&watcher.ask(b"stats?").await).unwrap();
    assert_eq!(first["connected_clients"], 1);

    let mut talker = server.client().await;
    for _ in 0..10 {
        talker.ask(b"hello").await;
    }
    let second: Value = serde_json::from_slice(&watcher.ask(b"stats?").await).unwrap();
    assert_eq!(second["connected_clients"], 2);
    assert_eq!(
        second["total_messages"].as_u64().unwrap(),
        first["total_messages"].as_u64().unwrap() + 11
    );
    assert!(second["bytes_in"].as_u64() > first["bytes_in"].as_u64());
    assert!(second["bytes_out"].as_u64() > first["bytes_out"].as_u64());
    let talker_addr = talker.stream.local_addr().unwrap().to_string();
    let entry = second["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == talker_addr.as_str())
        .expect("the talker is listed");
    assert_eq!(entry["messages_in"], 10);
    assert_eq!(entry["messages_out"], 10);
    assert_eq!(entry["bytes_in"], 60, "ten `hello\\n`");
    assert!(is_iso_millis(&second["server_start_time"]) && is_iso_millis(&second["current_time"]));

    talker.stream.shutdown().await.unwrap();
    assert!(talker.recv().await.is_none());
    first = serde_json::from_slice(&watcher.ask(b"stats?").await).unwrap();
    assert_eq!(
        first["connected_clients"], 1,
        "closed connections leave the figures"
    );
    server.stop().await;
}
