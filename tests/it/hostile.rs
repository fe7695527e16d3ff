//! Tenant budgets: the `hostile` test plugin tries every side door through which a plugin (or
//! its clients) could make the host spend without limit — sleeping in host calls, flooding
//! a reader that never reads, attributes, groups and timers by the megabyte, oversized replies,
//! log floods, expensive host calls, partial frames that never end. Each test runs it next to a
//! well-behaved tenant (`calm`, echo) on the same worker and asserts: the offending operation
//! or connection is refused or faulted and counted, what the host holds stays within the
//! configured budget and goes back when the connection closes, and the neighbour is served.

use crate::support;

use std::time::Duration;

use pier::BudgetKind;
use pier::FaultKind;
use support::{Client, Deployed, WAIT, eventually};

/// `hostile` (with `limits`) and `calm` (echo), both lines, on one worker.
async fn tenants(test: &str, limits: &str) -> Deployed {
    tenants_named(test, "hostile", limits).await
}

/// Like [`tenants`], with the hostile listener called `name`: metrics are process-wide series
/// labelled by listener name, so a test reading one must not share the name with tests running
/// alongside.
async fn tenants_named(test: &str, name: &str, limits: &str) -> Deployed {
    let dir = support::scratch_dir(test);
    std::fs::copy(
        support::guest_file("pier_hostile.wasm"),
        dir.join("hostile.wasm"),
    )
    .expect("copy the plugin");
    Deployed::start(
        &dir,
        &format!(
            r#"
[server]
workers = 1

[[listener]]
name = "{name}"
address = "127.0.0.1:0"
plugin = "hostile.wasm"
framing = "lines"
max_frame = "1MiB"
[listener.limits]
memory = "16MiB"
call_deadline = "300ms"
{limits}

[[listener]]
name = "calm"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"
"#
        ),
    )
    .await
}

/// The neighbour tenant answers.
async fn neighbour_is_served(pier: &Deployed, what: &str) {
    let mut calm = pier.client("calm").await;
    let line = format!("still here after {what}");
    assert_eq!(
        calm.ask(line.as_bytes()).await,
        support::echoed(line.as_bytes()),
        "{what}"
    );
}

fn hostile(pier: &Deployed) -> std::sync::Arc<pier::Listener> {
    hostile_named(pier, "hostile")
}

fn hostile_named(pier: &Deployed, name: &str) -> std::sync::Arc<pier::Listener> {
    pier.deployer
        .server()
        .listener(name)
        .expect("the hostile listener")
}

async fn ask_text(client: &mut Client, line: &str) -> String {
    String::from_utf8(client.ask(line.as_bytes()).await).expect("text reply")
}

#[tokio::test]
async fn a_guest_sleeping_in_a_host_call_is_faulted_at_its_deadline_and_shutdown_ends() {
    let pier = tenants("hostile-sleep", "").await;
    let mut sleeper = pier.client("hostile").await;
    // WASI sleep: no guest code runs, so the epoch alone never saw it. Before the wall-clock
    // bound this held the connection, an instance and the shutdown forever.
    sleeper.send(b"sleep 3600").await;
    assert!(sleeper.closed_by_server().await, "faulted at the deadline");
    let faults = &hostile(&pier).ctx.faults;
    assert_eq!(faults.of(FaultKind::Deadline), 1);
    neighbour_is_served(&pier, "a sleeping guest").await;

    // One more asleep while the server shuts down: the drain still ends.
    let mut asleep = pier.client("hostile").await;
    assert_eq!(ask_text(&mut asleep, "ok").await, "ok");
    asleep.send(b"sleep 3600").await;
    pier.stop().await;
}

#[tokio::test]
async fn expensive_host_calls_are_charged_to_the_callers_deadline() {
    let pier = tenants("hostile-peers", "").await;
    let _others: Vec<Client> = futures_join(&pier, 20).await;
    let mut caller = pier.client("hostile").await;
    // Ten million `peers()` calls: the time is spent in the host, and counts.
    caller.send(b"peers 10000000").await;
    assert!(caller.closed_by_server().await);
    assert_eq!(hostile(&pier).ctx.faults.of(FaultKind::Deadline), 1);
    neighbour_is_served(&pier, "a peers() loop").await;
    pier.stop().await;
}

async fn futures_join(pier: &Deployed, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut c = pier.client("hostile").await;
        assert_eq!(ask_text(&mut c, "ok").await, "ok");
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn a_broadcast_flood_to_a_reader_that_never_reads_stays_within_the_byte_budgets() {
    let pier = tenants(
        "hostile-flood",
        r#"write_queue_bytes = "256KiB"
queued_bytes = "1MiB"
slow_consumer = "close""#,
    )
    .await;
    let shared = hostile(&pier);
    let budget = shared.budgets.of(BudgetKind::QueuedBytes);
    // Connected, never reads.
    let mut victim = pier.client("hostile").await;
    assert_eq!(ask_text(&mut victim, "ok").await, "ok");
    let mut attacker = pier.client("hostile").await;
    // 1,100 frames of 64 KiB: 70 MB if the host held everything.
    let reply = ask_text(&mut attacker, "broadcast 1100 64").await;
    let delivered: u64 = reply
        .strip_prefix("delivered ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply}"));
    assert!(
        delivered < 1100,
        "the byte bound refused most of the flood: {delivered} delivered"
    );
    assert!(budget.used() <= budget.limit());
    // Under `close`, the byte bound evicts the reader as a slow consumer.
    assert!(
        victim.closed_by_server().await,
        "the slow consumer is closed"
    );
    assert!(shared.metrics.queue_closed.get() >= 1);
    eventually("everything queued for the victim is returned", async || {
        budget.used() == 0
    })
    .await;
    neighbour_is_served(&pier, "a broadcast flood").await;
    pier.stop().await;
}

#[tokio::test]
async fn the_tenant_budget_refuses_queued_bytes_across_many_readers_under_drop() {
    let pier = tenants(
        "hostile-queued",
        r#"write_queue_bytes = "4MiB"
queued_bytes = "512KiB""#,
    )
    .await;
    let shared = hostile(&pier);
    let budget = shared.budgets.of(BudgetKind::QueuedBytes);
    // Readers that never read: each could take 4 MiB, together they get 512 KiB.
    let readers = futures_join(&pier, 8).await;
    let mut attacker = pier.client("hostile").await;
    let _ = ask_text(&mut attacker, "broadcast 2000 64").await;
    assert!(budget.used() <= budget.limit(), "{}", budget.used());
    assert!(budget.refusals() > 0, "refusals are counted");
    drop(readers);
    eventually("the budget comes back once the readers leave", async || {
        budget.used() == 0
    })
    .await;
    neighbour_is_served(&pier, "many slow readers").await;
    pier.stop().await;
}

#[tokio::test]
async fn attributes_groups_and_timers_are_bounded_per_tenant_and_returned_on_close() {
    let pier = tenants(
        "hostile-state",
        r#"attribute_bytes = "1MiB"
group_bytes = "4KiB"
timers = 10"#,
    )
    .await;
    let shared = hostile(&pier);
    let mut a = pier.client("hostile").await;
    // 64 attributes of 64 KiB would be 4 MiB on one connection.
    let reply = ask_text(&mut a, "attrs 64 64").await;
    assert!(reply.starts_with("set 15 error"), "{reply}");
    let attributes = shared.budgets.of(BudgetKind::AttributeBytes);
    assert!(attributes.used() <= attributes.limit());
    // A second connection finds the tenant's budget spent.
    let mut b = pier.client("hostile").await;
    let reply = ask_text(&mut b, "attrs 1 64").await;
    assert!(reply.starts_with("set 0 error"), "{reply}");

    let reply = ask_text(&mut a, "groups 64 256").await;
    assert!(reply.starts_with("joined 16 error"), "{reply}");
    let reply = ask_text(&mut a, "timers 64 1000").await;
    assert!(reply.starts_with("started 10 error"), "{reply}");
    let reply = ask_text(&mut b, "timers 1 1000").await;
    assert!(reply.starts_with("started 0 error"), "{reply}");

    drop(a);
    eventually("the closed connection's state is returned", async || {
        [
            BudgetKind::AttributeBytes,
            BudgetKind::GroupBytes,
            BudgetKind::Timers,
        ]
        .iter()
        .all(|&k| shared.budgets.of(k).used() == 0)
    })
    .await;
    assert_eq!(ask_text(&mut b, "attrs 1 64").await, "set 1");
    neighbour_is_served(&pier, "attribute, group and timer floods").await;
    pier.stop().await;
}

#[tokio::test]
async fn a_reply_above_max_frame_is_a_fault_and_never_written() {
    let pier = tenants("hostile-reply", "").await;
    let mut big = pier.client("hostile").await;
    // 2 MiB with max_frame 1 MiB.
    big.send(b"reply 2048").await;
    assert_eq!(big.recv().await, None, "nothing of it is written");
    assert_eq!(hostile(&pier).ctx.faults.of(FaultKind::ReplyTooLarge), 1);
    // At the limit is fine.
    let mut fits = pier.client("hostile").await;
    fits.send(b"reply 1000").await;
    assert_eq!(fits.recv().await.map(|r| r.len()), Some(1000 * 1024));
    neighbour_is_served(&pier, "an oversized reply").await;
    pier.stop().await;
}

#[tokio::test]
async fn guest_output_beyond_the_rate_is_dropped_and_counted() {
    let pier = tenants("hostile-log", "").await;
    let shared = hostile(&pier);
    let mut noisy = pier.client("hostile").await;
    // 5 MB through `log` and 5 MB through stdout, in 1 KiB lines.
    assert_eq!(ask_text(&mut noisy, "log 5000").await, "logged");
    assert_eq!(ask_text(&mut noisy, "stdout 5000").await, "logged");
    let dropped = shared.metrics.output_dropped.get();
    // The burst (1 MiB) and a little of the rate (256 KiB/s) get through; the rest is dropped.
    assert!(dropped > 5_000, "{dropped} lines dropped");
    neighbour_is_served(&pier, "a log flood").await;
    pier.stop().await;
}

#[tokio::test]
async fn a_timer_storm_does_not_hide_a_closed_client() {
    let pier = tenants("hostile-timers", "").await;
    let shared = hostile(&pier);
    let stormers = timer_storm(&pier, "hostile").await;
    neighbour_is_served(&pier, "a timer storm").await;
    drop(stormers);
    eventually("the storming connections are seen closed", async || {
        shared.hub.listener_stats().connected == 0
    })
    .await;
    eventually("their timers are returned", async || {
        shared.budgets.of(BudgetKind::Timers).used() == 0
    })
    .await;
    pier.stop().await;
}

/// Twenty connections of `hostile` asking 64 timers of 1 ms each: far more calls than a worker
/// can make, each of them short, so no call is ever "long".
async fn timer_storm(pier: &Deployed, name: &str) -> Vec<Client> {
    let mut stormers = Vec::new();
    for _ in 0..20 {
        let mut c = pier.client(name).await;
        assert_eq!(ask_text(&mut c, "timers 64 1").await, "started 64");
        stormers.push(c);
    }
    stormers
}

#[tokio::test]
async fn a_timer_storm_is_held_to_its_cpu_share_while_the_neighbour_has_work() {
    let pier = tenants_named("hostile-cpu-share", "storm-shared", "").await;
    let held_back = hostile_named(&pier, "storm-shared")
        .metrics
        .cpu_held_back
        .clone();
    let _stormers = timer_storm(&pier, "storm-shared").await;
    // The neighbour keeps the worker wanted; the storm's calls are soon over their share.
    let mut calm = pier.client("calm").await;
    let mut asked = 0u64;
    eventually("the storming tenant is held back", async || {
        for _ in 0..20 {
            asked += 1;
            let line = format!("frame {asked}");
            assert_eq!(
                calm.ask(line.as_bytes()).await,
                support::echoed(line.as_bytes())
            );
        }
        held_back.get() > 0
    })
    .await;
    pier.stop().await;
}

#[tokio::test]
async fn a_cpu_share_of_100_percent_is_never_held_back() {
    let pier = tenants_named(
        "hostile-cpu-share-off",
        "storm-unshared",
        r#"cpu_share = "100%""#,
    )
    .await;
    let held_back = hostile_named(&pier, "storm-unshared")
        .metrics
        .cpu_held_back
        .clone();
    let _stormers = timer_storm(&pier, "storm-unshared").await;
    let mut calm = pier.client("calm").await;
    for i in 0..50 {
        let line = format!("frame {i}");
        assert_eq!(
            calm.ask(line.as_bytes()).await,
            support::echoed(line.as_bytes())
        );
    }
    assert_eq!(held_back.get(), 0);
    pier.stop().await;
}

#[tokio::test]
async fn a_frame_that_trickles_in_is_cut_off_by_the_frame_timeout() {
    let pier = tenants("hostile-slowloris", r#"frame_timeout = "400ms""#).await;
    let mut trickle = pier.client("hostile").await;
    // One byte every 100 ms, never a newline: each byte resets the idle timer, none finishes
    // the frame.
    let mut closed = false;
    for _ in 0..((WAIT.as_millis() / 100) as usize) {
        if tokio::io::AsyncWriteExt::write_all(&mut trickle.stream, b"x")
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        if trickle
            .closed_by_server_within(Duration::from_millis(100))
            .await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling connection is closed");
    // A client that finishes its frames is not affected by the same timeout.
    let mut steady = pier.client("hostile").await;
    for _ in 0..3 {
        assert_eq!(ask_text(&mut steady, "ok").await, "ok");
    }
    neighbour_is_served(&pier, "a slowloris").await;
    pier.stop().await;
}

#[tokio::test]
async fn partial_frames_are_bounded_per_tenant() {
    let pier = tenants("hostile-partial", r#"partial_frame_bytes = "96KiB""#).await;
    let shared = hostile(&pier);
    let budget = shared.budgets.of(BudgetKind::PartialFrameBytes);
    // Two clients each hold 64 KiB of an unfinished line: the second does not fit.
    let mut first = pier.client("hostile").await;
    first.write_raw(&vec![b'a'; 64 * 1024]).await;
    eventually("the first partial frame is held", async || {
        budget.used() == 64 * 1024
    })
    .await;
    let mut second = pier.client("hostile").await;
    second.write_raw(&vec![b'b'; 64 * 1024]).await;
    assert!(second.closed_by_server().await, "past the tenant's budget");
    assert!(budget.refusals() >= 1);
    assert!(budget.used() <= budget.limit());
    // The first one finishes its line and is answered; the budget is returned.
    first.write_raw(b"\n").await;
    assert_eq!(first.recv().await.map(|r| r.len()), Some(64 * 1024));
    eventually("the finished frame is no longer charged", async || {
        budget.used() == 0
    })
    .await;
    neighbour_is_served(&pier, "partial frames").await;
    pier.stop().await;
}
