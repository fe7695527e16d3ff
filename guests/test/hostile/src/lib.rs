//! A test plugin that tries to make the host spend without limit on its behalf — the sandbox's
//! side doors rather than its walls. Each line is one attack; the reply says what the host let
//! it do, so tests can assert the refusal as well as the survival of the neighbours.
//!
//! - `sleep SECS`: WASI sleep inside `on-frame` (time in a host call, not in guest code);
//! - `broadcast N KIB`: broadcasts N frames of KIB KiB → `delivered D`;
//! - `send-self N KIB`: queues N frames of KIB KiB for its own connection → `queued Q`;
//! - `attrs N KIB`: sets N attributes of KIB KiB on its connection → `set S` or `set S error E`;
//! - `groups N LEN`: joins N groups with LEN-byte names → `joined J` or `joined J error E`;
//! - `timers N MS`: starts N periodic timers every MS ms → `started T` or `started T error E`;
//!   each firing does a little work and replies nothing;
//! - `reply KIB`: answers with a KIB KiB reply;
//! - `log KIB` / `stdout KIB`: writes KIB KiB of 1 KiB log lines / stdout lines → `logged`;
//! - `peers N` / `conns N`: calls `peers()` / `stats.connections()` N times → `saw C`;
//! - `loop`: spins until the deadline stops it;
//! - `ok`: `ok`; anything else is echoed.

use pier_sdk::Level;
use pier_sdk::{ConnectionId, Plugin};
use pier_sdk::{attributes, connections, groups, log, stats, timers};

struct Hostile;

fn numbers(args: &str) -> (u64, u64) {
    let mut it = args
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn attack(id: ConnectionId, line: &str) -> Option<String> {
    let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
    let (a, b) = numbers(args);
    Some(match verb {
        "ok" => "ok".into(),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(a));
            "slept".into()
        }
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        "broadcast" => {
            let frame = vec![b'b'; (b * 1024) as usize];
            let delivered: u64 = (0..a)
                .map(|_| u64::from(connections::broadcast(&frame, Some(id))))
                .sum();
            format!("delivered {delivered}")
        }
        "send-self" => {
            let frame = vec![b's'; (b * 1024) as usize];
            let queued = (0..a)
                .filter(|_| connections::send(id, &frame).is_ok())
                .count();
            format!("queued {queued}")
        }
        "attrs" => {
            let value = "v".repeat((b * 1024) as usize);
            let mut set = 0;
            for i in 0..a {
                if let Err(e) = attributes::set(id, &format!("k{i}"), &value) {
                    return Some(format!("set {set} error {e:?}"));
                }
                set += 1;
            }
            format!("set {set}")
        }
        "groups" => {
            let mut joined = 0;
            for i in 0..a {
                let mut name = format!("g{i}-");
                name.extend(std::iter::repeat_n(
                    'n',
                    (b as usize).saturating_sub(name.len()),
                ));
                if let Err(e) = groups::join(id, &name) {
                    return Some(format!("joined {joined} error {e:?}"));
                }
                joined += 1;
            }
            format!("joined {joined}")
        }
        "timers" => {
            let mut started = 0;
            for _ in 0..a {
                if let Err(e) = timers::start(id, b, Some(b)) {
                    return Some(format!("started {started} error {e:?}"));
                }
                started += 1;
            }
            format!("started {started}")
        }
        "reply" => return Some("r".repeat((a * 1024) as usize)),
        "log" => {
            let line = "l".repeat(1023);
            for _ in 0..a {
                log::log(Level::Info, &line);
            }
            "logged".into()
        }
        "stdout" => {
            let line = "o".repeat(1023);
            for _ in 0..a {
                println!("{line}");
            }
            "logged".into()
        }
        "peers" => {
            let seen: usize = (0..a).map(|_| connections::peers().len()).sum();
            format!("saw {seen}")
        }
        "conns" => {
            let seen: usize = (0..a).map(|_| stats::connections().len()).sum();
            format!("saw {seen}")
        }
        _ => return None,
    })
}

impl Plugin for Hostile {
    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let line = String::from_utf8_lossy(frame);
        match attack(id, line.trim()) {
            Some(reply) => Some(reply.into_bytes()),
            None => Some(frame.to_vec()),
        }
    }
}

impl pier_sdk::Timers for Hostile {
    fn on_timer(_id: ConnectionId, _timer: u64) -> Option<Vec<u8>> {
        // A little work per firing, so a storm costs CPU as a real one would.
        let mut n: u64 = 0;
        for i in 0..2_000u64 {
            n = core::hint::black_box(n.wrapping_add(i));
        }
        None
    }
}

pier_sdk::export!(Hostile, timers);
