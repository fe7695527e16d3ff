//! One tenant over several pier nodes joined through a real nats-server: chat across three
//! nodes, sends, closes and group sends to connections on other nodes, tenants kept apart, and
//! the faults — NATS away at start, NATS restarted, a NATS server of a pair killed, a pier node
//! killed with SIGKILL.
//!
//! Nodes learn of each other asynchronously (presence over NATS), so every test first waits
//! for the state it needs to be visible — `/list` or `peers` showing everyone — never for time.

use crate::support::nats::{Lines, Nats};
use crate::support::served::Served;
use crate::support::{WAIT, guest_file, ports, scratch_dir};

/// `pier serve PLUGIN --framing lines` joined to the cluster at `nats` as node `node`.
fn node(plugin: &str, nats: &[String], node: &str) -> Served {
    Served::start(&[
        plugin,
        "--framing",
        "lines",
        "--cluster",
        &nats.join(","),
        "--node",
        node,
    ])
}

fn testkit() -> String {
    guest_file("pier_testkit.wasm")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// A chat member on `addr` called `name`. Names are claimed through JetStream, which a fresh
/// NATS (or NATS cluster) serves only once it is ready: until then the chat answers that names
/// cannot be checked, and the member asks again.
fn member(addr: &str, name: &str) -> Lines {
    let mut client = Lines::connect(addr);
    client.wait("Welcome to pier chat! Enter your name:");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = client.ask(name, "");
        if answer == format!("Hello {name}! You can now chat.") {
            return client;
        }
        assert!(
            answer.starts_with("Names cannot be checked right now")
                && std::time::Instant::now() < deadline,
            "{name} was not let in: {answer:?}"
        );
    }
}

/// Asks `/list` until it shows `expected` (the room as every node will eventually see it).
fn until_listed(client: &mut Lines, expected: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = client.ask("/list", "Online (");
        if list == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room never showed {expected:?}; last: {list:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A testkit client: its id, from `whoami`.
fn kit(addr: &str) -> (Lines, u64) {
    let mut client = Lines::connect(addr);
    let welcome = client.wait_from(0, "welcome", |l| l.starts_with("welcome "));
    let id = welcome
        .trim_start_matches("welcome ")
        .parse()
        .expect("an id in the greeting");
    let whoami = client.ask("whoami", &format!("{id} "));
    assert!(whoami.starts_with(&format!("{id} ")), "{whoami}");
    (client, id)
}

/// Asks `question` until the reply is `expected`.
fn until_reply(client: &mut Lines, question: &str, expected: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let from = client.seen();
        client.say(question);
        let reply = client.wait_from(from, "a reply", |_| true);
        if reply == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{question:?} never answered {expected:?}; last: {reply:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn chat_across_three_nodes_has_one_room() {
    let nats = Nats::start("cluster-chat");
    let servers = [nats.url()];
    let nodes: Vec<Served> = ["a", "b", "c"]
        .into_iter()
        .map(|name| node("chat", &servers, name))
        .collect();
    let mut ann = member(&nodes[0].addr, "ann");
    let mut bob = member(&nodes[1].addr, "bob");
    let mut cat = member(&nodes[2].addr, "cat");
    for client in [&mut ann, &mut bob, &mut cat] {
        until_listed(client, "Online (3): ann, bob, cat");
    }
    // A name is taken cluster-wide.
    let mut other = Lines::connect(&nodes[1].addr);
    other.wait("Welcome to pier chat! Enter your name:");
    assert_eq!(
        other.ask("ann", "The name"),
        "The name ann is taken. Enter your name:"
    );
    drop(other);

    // A message reaches every other member exactly once, and not its sender.
    ann.say("hello from a");
    bob.wait("ann: hello from a");
    cat.wait("ann: hello from a");
    bob.say("hello from b");
    for client in [&ann, &cat] {
        client.wait("bob: hello from b");
    }
    // Later lines from the same sender mark that nothing more of the first is coming: frames
    // from one sender to one recipient keep their order.
    ann.say("marker");
    bob.wait("ann: marker");
    cat.wait("ann: marker");
    assert_eq!(bob.count("ann: hello from a"), 1, "{:?}", bob.all());
    assert_eq!(cat.count("ann: hello from a"), 1, "{:?}", cat.all());
    assert_eq!(ann.count("ann: hello from a"), 0, "{:?}", ann.all());
    assert_eq!(ann.count("bob: hello from b"), 1);

    // Leaving is told on every node.
    cat.say("/quit");
    cat.wait_closed();
    ann.wait("cat left the chat");
    bob.wait("cat left the chat");
    until_listed(&mut ann, "Online (2): ann, bob");
}

#[test]
fn two_newcomers_racing_for_one_name_on_two_nodes_exactly_one_gets_it() {
    let nats = Nats::start("cluster-race");
    let servers = [nats.url()];
    let a = node("chat", &servers, "a");
    let b = node("chat", &servers, "b");
    let mut ann = member(&a.addr, "ann");
    let mut bob = member(&b.addr, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
    until_listed(&mut bob, "Online (2): ann, bob");
    for round in 0..10 {
        let name = format!("racer{round}");
        let mut first = Lines::connect(&a.addr);
        let mut second = Lines::connect(&b.addr);
        for client in [&first, &second] {
            client.wait("Welcome to pier chat! Enter your name:");
        }
        // Both ask at once: the two claims meet in NATS, not in either node.
        let (from_first, from_second) = (first.seen(), second.seen());
        first.say(&name);
        second.say(&name);
        let answers = [
            first.wait_from(from_first, "an answer", |_| true),
            second.wait_from(from_second, "an answer", |_| true),
        ];
        let hello = format!("Hello {name}! You can now chat.");
        let taken = format!("The name {name} is taken. Enter your name:");
        assert_eq!(
            answers.iter().filter(|a| **a == hello).count(),
            1,
            "round {round}: {answers:?}"
        );
        assert_eq!(
            answers.iter().filter(|a| **a == taken).count(),
            1,
            "round {round}: {answers:?}"
        );
    }
    // A name is free again once its holder leaves, on any node.
    let mut ann_again = Lines::connect(&b.addr);
    ann_again.wait("Welcome to pier chat! Enter your name:");
    assert_eq!(
        ann_again.ask("ann", "The name"),
        "The name ann is taken. Enter your name:"
    );
    ann.say("/quit");
    ann.wait_closed();
    let deadline = std::time::Instant::now() + WAIT;
    while ann_again.ask("ann", "") != "Hello ann! You can now chat." {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            ann_again.all()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn send_close_and_group_send_reach_connections_on_other_nodes() {
    let nats = Nats::start("cluster-kit");
    let servers = [nats.url()];
    let kit_path = testkit();
    let nodes: Vec<Served> = ["a", "b", "c"]
        .into_iter()
        .map(|name| node(&kit_path, &servers, name))
        .collect();
    let (mut x, _x_id) = kit(&nodes[0].addr);
    let (mut y, y_id) = kit(&nodes[1].addr);
    let (mut z, z_id) = kit(&nodes[2].addr);
    for client in [&mut x, &mut y, &mut z] {
        until_reply(client, "peers", "3");
        until_reply(client, "connected", "3");
    }
    // Ids are unique across the nodes.
    assert_ne!(y_id, z_id);

    // `connections.send` to a connection on another node.
    assert_eq!(x.ask(&format!("send {y_id} hi y"), "sent"), "sent");
    y.wait("hi y");
    assert_eq!(x.ask("send 12345 nobody", "unknown"), "unknown-connection");

    // `groups.send` to a group with members on all three nodes reaches the other two.
    for client in [&mut x, &mut y, &mut z] {
        assert_eq!(client.ask("join room", "joined"), "joined");
    }
    for client in [&mut x, &mut y, &mut z] {
        until_reply(client, "members room", "3");
    }
    assert_eq!(x.ask("gsend room to the room", "reached"), "reached 2");
    y.wait("to the room");
    z.wait("to the room");
    x.say("marker");
    x.wait("Echo: marker");
    assert_eq!(x.count("to the room"), 0, "the sender is excepted");

    // `close` of a connection on another node; its `on-close` tells everyone, everywhere.
    assert_eq!(x.ask(&format!("close {z_id}"), "closed"), "closed true");
    z.wait_closed();
    let left = format!("left {z_id} plugin-closed");
    x.wait(&left);
    y.wait(&left);
    until_reply(&mut x, "peers", "2");
    until_reply(&mut y, &format!("send {z_id} gone?"), "unknown-connection");
}

#[test]
fn a_second_tenant_with_the_same_group_names_receives_nothing_of_the_first() {
    let nats = Nats::start("cluster-tenants");
    let kit_path = testkit();
    let start = |name: &str| {
        let config = scratch_dir(&format!("cluster-tenants-{name}")).join("pier.toml");
        let listener = |tenant: &str| {
            format!(
                "[[listener]]\nname = \"{tenant}\"\naddress = \"127.0.0.1:0\"\nplugin = \"{kit_path}\"\nframing = \"lines\"\n"
            )
        };
        std::fs::write(
            &config,
            format!(
                "[admin]\naddress = \"127.0.0.1:0\"\n[cluster]\nnats = [\"{}\"]\nnode = \"{name}\"\n{}{}",
                nats.url(),
                listener("one"),
                listener("two")
            ),
        )
        .expect("write pier.toml");
        Served::start_listeners(&["--config", config.to_str().expect("utf-8")], 2)
    };
    let (a, b) = (start("a"), start("b"));
    let (mut one_a, _) = kit(&a.addr_of("one"));
    let (mut one_b, _) = kit(&b.addr_of("one"));
    let (mut two_a, _) = kit(&a.addr_of("two"));
    let (mut two_b, _) = kit(&b.addr_of("two"));
    for client in [&mut one_a, &mut one_b, &mut two_a, &mut two_b] {
        assert_eq!(client.ask("join room", "joined"), "joined");
    }
    for client in [&mut one_a, &mut one_b, &mut two_a, &mut two_b] {
        until_reply(client, "members room", "2");
        until_reply(client, "peers", "2");
    }
    assert_eq!(one_a.ask("gsend room for one", "reached"), "reached 1");
    assert_eq!(
        one_a.ask("broadcast everyone in one", "reached"),
        "reached 1"
    );
    one_b.wait("for one");
    one_b.wait("everyone in one");
    // Tenant two's clients got none of it: their own echo comes back with nothing before it.
    for client in [&mut two_a, &mut two_b] {
        client.ask("marker", "Echo: marker");
        assert!(
            !client.all().iter().any(|l| l.contains("one")),
            "{:?}",
            client.all()
        );
    }
    // The cluster's figures, per tenant, and the node in /plugins.
    let admin = a.admin_addr();
    let expected = [
        "pier_cluster_connected 1",
        "pier_connections_open{listener=\"one\",node=\"a\"} 1",
        "pier_cluster_node_info{node=\"a\"} 1",
        "pier_cluster_nodes{listener=\"one\"} 1",
        "pier_cluster_nodes{listener=\"two\"} 1",
    ];
    // The node count is refreshed once a heartbeat.
    crate::support::served::eventually("the cluster figures", || {
        let metrics = crate::support::served::http_get(&admin, "/metrics");
        expected.iter().all(|line| metrics.contains(line))
    });
    let metrics = crate::support::served::http_get(&admin, "/metrics");
    let sent = metrics
        .lines()
        .find(|l| l.starts_with("pier_cluster_messages_total{direction=\"out\",listener=\"one\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("messages out in\n{metrics}"));
    assert!(sent > 0);
    let plugins = crate::support::served::http_get(&admin, "/plugins");
    assert!(plugins.contains(r#""node":"a""#), "{plugins}");
    assert!(
        a.log().contains("cluster node a; listener one)"),
        "{}",
        a.log()
    );
}

#[test]
fn nats_away_at_start_then_restarted_mid_chat_and_a_node_killed() {
    // NATS is not there yet: the node starts, serves its own clients and says so once.
    let port = ports::reserved_port();
    let url = format!("nats://127.0.0.1:{port}");
    let a = node("chat", std::slice::from_ref(&url), "a");
    assert!(a.wait_for_log("cannot reach NATS"), "{}", a.log());
    let mut ann = Lines::connect(&a.addr);
    ann.wait("Welcome to pier chat! Enter your name:");
    // A name is unique cluster-wide, so it cannot be granted while the cluster is away; the
    // chat says so and nothing blocks.
    assert_eq!(
        ann.ask("ann", "Names"),
        "Names cannot be checked right now; try again. Enter your name:"
    );
    assert_eq!(
        ann.ask("/help", "Names"),
        "Names cannot start with / or contain control characters. Enter your name:"
    );

    // NATS comes (on the port the nodes were told): the cluster forms by itself.
    let mut nats = Nats::start_on("cluster-faults", port);
    let deadline = std::time::Instant::now() + WAIT;
    while ann.ask("ann", "") != "Hello ann! You can now chat." {
        assert!(
            std::time::Instant::now() < deadline,
            "never named: {:?}",
            ann.all()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let b = node("chat", std::slice::from_ref(&url), "b");
    let mut bob = member(&b.addr, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
    until_listed(&mut bob, "Online (2): ann, bob");

    // NATS restarted mid-chat: cross-node traffic resumes, no pier restart.
    nats.restart();
    resumes(&mut ann, &bob, "ann");
    resumes(&mut bob, &ann, "bob");

    // A node killed with SIGKILL: its members leave the others' view within the bound.
    let mut c = node("chat", std::slice::from_ref(&url), "c");
    let mut cat = member(&c.addr, "cat");
    until_listed(&mut ann, "Online (3): ann, bob, cat");
    until_listed(&mut cat, "Online (3): ann, bob, cat");
    c.child.kill().expect("kill node c");
    let _ = c.child.wait();
    until_listed(&mut ann, "Online (2): ann, bob");
    until_listed(&mut bob, "Online (2): ann, bob");
    // One surviving node speaks for the dead one: the chat says cat left, once, everywhere.
    ann.wait("cat left the chat");
    bob.wait("cat left the chat");
    resumes(&mut ann, &bob, "ann");
    assert_eq!(ann.count("cat left the chat"), 1, "{:?}", ann.all());
    assert_eq!(bob.count("cat left the chat"), 1, "{:?}", bob.all());
}

/// Sends numbered lines from `from` until `to` receives one: cross-node delivery works again.
fn resumes(from: &mut Lines, to: &Lines, name: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    for i in 0.. {
        let line = format!("are you there {i}");
        from.say(&line);
        let expected = format!("{name}: {line}");
        let waited = std::time::Instant::now();
        while waited.elapsed() < std::time::Duration::from_millis(200) {
            if to.count(&expected) > 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cross-node delivery never resumed; got {:?}",
            to.all()
        );
    }
}

#[test]
fn a_nats_server_of_a_pair_killed_the_nodes_fail_over() {
    let (mut first, second) = Nats::pair("cluster-pair");
    let servers = [first.url(), second.url()];
    let a = node("chat", &servers, "a");
    let b = node("chat", &servers, "b");
    let mut ann = member(&a.addr, "ann");
    let mut bob = member(&b.addr, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
    until_listed(&mut bob, "Online (2): ann, bob");
    first.kill();
    resumes(&mut ann, &bob, "ann");
    resumes(&mut bob, &ann, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
}

/// One length-prefixed JSON client (the seed protocol's framing: 4-byte big-endian length).
struct Json(std::net::TcpStream);

impl Json {
    fn connect(addr: &str) -> Json {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Json(stream)
    }

    fn send(&mut self, value: serde_json::Value) {
        use std::io::Write;
        let body = value.to_string();
        let len = u32::try_from(body.len()).expect("small frame");
        self.0.write_all(&len.to_be_bytes()).expect("send");
        self.0.write_all(body.as_bytes()).expect("send");
    }

    fn read(&mut self) -> serde_json::Value {
        use std::io::Read;
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).expect("a frame in time");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).expect("a frame in time");
        serde_json::from_slice(&body).expect("JSON")
    }

    fn ask(&mut self, value: serde_json::Value) -> serde_json::Value {
        self.send(value);
        self.read()
    }
}

#[test]
fn the_json_protocols_broadcast_and_stats_span_two_nodes() {
    use serde_json::json;
    let nats = Nats::start("cluster-lpjson");
    let servers = [nats.url()];
    let start = |name: &str| {
        Served::start(&[
            "lpjson",
            "--framing",
            "length-prefixed",
            "--cluster",
            &servers.join(","),
            "--node",
            name,
        ])
    };
    let (a, b) = (start("a"), start("b"));
    let mut on_a = Json::connect(&a.addr);
    let mut on_b = Json::connect(&b.addr);
    // `get_stats` counts the whole tenant's clients once both nodes see each other.
    for client in [&mut on_a, &mut on_b] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let stats = client.ask(json!({"type": "get_stats"}));
            assert_eq!(stats["type"], "server_stats");
            if stats["connected_clients"] == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stats}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let sent = on_a.ask(json!({"type": "broadcast", "content": "across nodes"}));
    assert_eq!(sent["type"], "broadcast_sent");
    assert_eq!(sent["recipients"], 1);
    let note = on_b.read();
    assert_eq!(note["type"], "broadcast");
    assert_eq!(note["content"], "across nodes");
    assert_eq!(
        note["from"],
        on_a.0.local_addr().expect("address").to_string().as_str()
    );
}

#[test]
fn nodes_authenticate_to_nats_with_secrets_from_files() {
    let nats = Nats::start_with_auth("cluster-auth", &["--user", "pier", "--pass", "s3cret"]);
    let folder = scratch_dir("cluster-auth-files");
    std::fs::write(folder.join("right"), "s3cret\n").expect("write the password");
    std::fs::write(folder.join("wrong"), "guess\n").expect("write the password");
    let start = |name: &str, password: &str| {
        let config = folder.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\nnats = [\"{}\"]\nnode = \"{name}\"\nuser = \"pier\"\npassword_file = \"{password}\"\n\
                 [[listener]]\nname = \"chat\"\naddress = \"127.0.0.1:0\"\nplugin = \"chat\"\nframing = \"lines\"\n",
                nats.url()
            ),
        )
        .expect("write pier.toml");
        Served::start(&["--config", config.to_str().expect("utf-8")])
    };
    let (a, b) = (start("a", "right"), start("b", "right"));
    let mut ann = member(&a.addr, "ann");
    let bob = member(&b.addr, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
    ann.say("signed in");
    bob.wait("ann: signed in");
    // A node with the wrong password is refused by NATS: it says so and serves alone.
    let c = start("c", "wrong");
    assert!(c.wait_for_log("cannot reach NATS"), "{}", c.log());
    assert!(
        !c.log().contains("guess"),
        "the secret stays out of the log"
    );
    let cat = Lines::connect(&c.addr);
    cat.wait("Welcome to pier chat! Enter your name:");
    until_listed(&mut ann, "Online (2): ann, bob");
}

#[test]
fn nodes_reach_nats_over_tls_checked_against_the_configured_ca() {
    let (certs, _) = crate::support::served::certificates("cluster-tls-certs", &[]);
    let pem = |name: &str| certs.join(name).to_str().expect("utf-8").to_string();
    let nats = Nats::start_with_auth(
        "cluster-tls",
        &[
            "--tls",
            "--tlscert",
            &pem("server.pem"),
            "--tlskey",
            &pem("server-key.pem"),
        ],
    );
    let start = |name: &str| {
        let config = scratch_dir(&format!("cluster-tls-{name}")).join("pier.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nnats = [\"tls://127.0.0.1:{}\"]\nnode = \"{name}\"\n[cluster.tls]\nca = \"{}\"\n\
                 [[listener]]\nname = \"chat\"\naddress = \"127.0.0.1:0\"\nplugin = \"chat\"\nframing = \"lines\"\n",
                nats.port,
                pem("ca.pem")
            ),
        )
        .expect("write pier.toml");
        Served::start(&["--config", config.to_str().expect("utf-8")])
    };
    let (a, b) = (start("a"), start("b"));
    let mut ann = member(&a.addr, "ann");
    let bob = member(&b.addr, "bob");
    until_listed(&mut ann, "Online (2): ann, bob");
    ann.say("over tls");
    bob.wait("ann: over tls");
}

/// Runs `pier deploy --cluster URL ARGS` and returns its exit code and stdout.
fn deploy(nats: &Nats, args: &[&str]) -> (Option<i32>, String, String) {
    let out = crate::support::served::pier()
        .args(["deploy", "--cluster", &nats.url(), "--timeout", "60s"])
        .args(args)
        .output()
        .expect("run pier deploy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A line client that keeps asking `n` and checking `Echo: n` on one connection until stopped:
/// the traffic that must flow through a rollout without a dropped connection or a lost frame.
struct Steady {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Steady {
    fn start(addr: &str) -> Steady {
        use std::io::{BufRead, Write};
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut writer = stream.try_clone().expect("clone");
            let mut reader = std::io::BufReader::new(stream);
            let (mut answered, mut problems) = (0, Vec::new());
            let mut n = 0u64;
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if writeln!(writer, "{n}").is_err() {
                    problems.push(format!("{n}: connection dropped"));
                    break;
                }
                let mut reply = String::new();
                // After the swap, testkit tells everyone when a client leaves (another steady
                // client finishing): not a reply.
                let mut read = reader.read_line(&mut reply);
                while matches!(read, Ok(n) if n > 0) && reply.starts_with("left ") {
                    reply.clear();
                    read = reader.read_line(&mut reply);
                }
                match read {
                    Ok(0) | Err(_) => {
                        problems.push(format!("{n}: no reply"));
                        break;
                    }
                    Ok(_) if reply.trim_end() == format!("Echo: {n}") => answered += 1,
                    Ok(_) => problems.push(format!("{n}: got {reply:?}")),
                }
            }
            (answered, problems)
        });
        Steady { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the steady client")
    }
}

#[test]
fn a_plugin_rolled_out_to_three_nodes_swaps_everywhere_refusals_are_reported_and_late_nodes_catch_up()
 {
    let nats = Nats::start("cluster-rollout");
    let folder = scratch_dir("cluster-rollout");
    let start_with = |name: &str, plugin: &str| {
        let config = folder.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\nnats = [\"{}\"]\nnode = \"{name}\"\n\
                 [[listener]]\nname = \"room\"\naddress = \"127.0.0.1:0\"\nplugin = \"{plugin}\"\nframing = \"lines\"\n",
                nats.url()
            ),
        )
        .expect("write pier.toml");
        let node = Served::start(&["--config", config.to_str().expect("utf-8")]);
        // In the cluster, listening for announcements.
        assert!(
            node.wait_for_log("cluster: connected to NATS"),
            "{}",
            node.log()
        );
        assert!(
            node.wait_for_log("tenant joined the cluster"),
            "{}",
            node.log()
        );
        node
    };
    let start = |name: &str| start_with(name, "echo");
    let nodes: Vec<Served> = ["a", "b", "c"].into_iter().map(start).collect();
    let steady: Vec<Steady> = nodes.iter().map(|n| Steady::start(&n.addr)).collect();
    let testkit = guest_file("pier_testkit.wasm");
    let testkit = testkit.to_str().expect("utf-8");

    // Every node swaps to the new version; the clients never notice but for the new replies.
    let (code, printed, log) = deploy(&nats, &["room", testkit]);
    assert_eq!(code, Some(0), "{printed}{log}");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for (line, node) in lines.iter().zip(["a", "b", "c"]) {
        assert!(
            line.starts_with(&format!("{node}: swapped to ")),
            "{printed}"
        );
    }
    for client in steady {
        let (answered, problems) = client.finish();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(answered > 0);
    }
    let mut asker = Lines::connect(&nodes[1].addr);
    let welcome = asker.wait_from(0, "a greeting", |l| l.starts_with("welcome "));
    assert!(welcome.starts_with("welcome "), "testkit greets: {welcome}");

    // A broken component is refused by every node, reported, and changes nothing.
    let broken = folder.join("broken.wasm");
    std::fs::write(&broken, b"this is not a component").expect("write");
    let (code, printed, _) = deploy(&nats, &["room", broken.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{printed}");
    assert_eq!(printed.matches(": refused: ").count(), 3, "{printed}");
    asker.ask("whoami", "");

    // A node started after the rollout serves the deployed version.
    let late = start("d");
    let mut on_late = Lines::connect(&late.addr);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = on_late.ask("peers", "");
        if reply != "Echo: peers" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node d never caught up"
        );
        drop(on_late);
        std::thread::sleep(std::time::Duration::from_millis(50));
        on_late = Lines::connect(&late.addr);
    }

    // Rolled out again (the echo built-in's component), then back.
    let echo = folder.join("echo.wasm");
    std::fs::write(&echo, crate::support::builtin_wasm("echo")).expect("write");
    let (code, printed, log) = deploy(&nats, &["room", echo.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{printed}{log}");
    assert_eq!(printed.matches(": swapped to ").count(), 4, "{printed}");
    let (code, printed, log) = deploy(&nats, &["--rollback", "room"]);
    assert_eq!(code, Some(0), "{printed}{log}");
    assert_eq!(printed.matches(": swapped to ").count(), 4, "{printed}");
    let after = Lines::connect(&nodes[0].addr);
    after.wait_from(0, "testkit's greeting again", |l| l.starts_with("welcome "));

    // `plugin = "cluster:room"`: a node whose config names no component serves the deployed one.
    let follower = start_with("e", "cluster:room");
    assert!(
        follower.log().contains("plugin cluster:room"),
        "{}",
        follower.log()
    );
    let on_follower = Lines::connect(&follower.addr);
    on_follower.wait_from(0, "testkit's greeting", |l| l.starts_with("welcome "));
}

#[test]
fn a_clustered_listener_restarted_by_a_reload_stays_one_room_with_the_other_nodes() {
    let nats = Nats::start("cluster-restart");
    let folder = scratch_dir("cluster-restart");
    let write = |name: &str, address: &str| {
        let config = folder.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\nnats = [\"{}\"]\nnode = \"{name}\"\n\
                 [[listener]]\nname = \"chat\"\naddress = \"{address}\"\nplugin = \"chat\"\nframing = \"lines\"\n",
                nats.url()
            ),
        )
        .expect("write pier.toml");
        config
    };
    let a_config = write("a", "127.0.0.1:0");
    let a = Served::start(&["--config", a_config.to_str().expect("utf-8")]);
    let b = Served::start(&[
        "--config",
        write("b", "127.0.0.1:0").to_str().expect("utf-8"),
    ]);
    let mut ann = member(&a.addr_of("chat"), "ann");
    let mut bob = member(&b.addr_of("chat"), "bob");
    until_listed(&mut bob, "Online (2): ann, bob");

    // A new address restarts the listener: ann stays on the old one until she leaves, newcomers
    // get the new one, and node b sees both as one room.
    let moved = format!("127.0.0.1:{}", ports::reserved_port());
    write("a", &moved);
    a.signal("HUP");
    assert!(
        a.wait_for_log(&format!("listening on {moved}")),
        "{}",
        a.log()
    );
    let mut cat = member(&moved, "cat");
    until_listed(&mut bob, "Online (3): ann, bob, cat");
    until_listed(&mut cat, "Online (3): ann, bob, cat");
    until_listed(&mut ann, "Online (3): ann, bob, cat");
    ann.say("still here");
    bob.wait("ann: still here");
    cat.wait("ann: still here");
    cat.say("new here");
    bob.wait("cat: new here");
    ann.wait("cat: new here");
    // The old registry goes once ann leaves; the new one stays.
    ann.say("/quit");
    ann.wait_closed();
    bob.wait("ann left the chat");
    until_listed(&mut bob, "Online (2): bob, cat");
}
