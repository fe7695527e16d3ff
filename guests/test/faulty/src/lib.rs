//! A test plugin that misbehaves on request, so the host's fault isolation can be tested over
//! real sockets. Frames are echoed like the echo plugin, except these magic frames:
//!
//! - `trap`: executes `unreachable`, a guest trap;
//! - `loop`: spins forever, until the host's call deadline interrupts it;
//! - `oom`: grows memory without bound, until the host's memory limit refuses it;
//! - `panic`: a Rust panic (which, without WASI stderr, also ends in a trap);
//! - `flood`: queues frames for its own connection without end, until the deadline stops it;
//! - `read PATH`: tries to read a file through WASI and replies with what it got;
//! - `env NAME`: tries to read an environment variable through WASI;
//! - `print TEXT`: writes TEXT to stdout and replies `printed`;
//! - `connect ADDR`: tries to open a TCP connection and replies with what it got;
//! - `exit`: asks WASI to end the process;
//! - `clock`: replies the WASI wall-clock time in seconds since the Unix epoch;
//! - `leak KIB`: keeps KIB KiB of memory allocated for good, like a runtime that leaks a little
//!   per call, and replies `leaked`.

use pier_sdk::Level;
use pier_sdk::{ConnectionId, Plugin};

struct Faulty;

impl Plugin for Faulty {
    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(frame);
        if let Some(path) = text.strip_prefix("read ") {
            return Some(match std::fs::read_to_string(path) {
                Ok(contents) => format!("read {} bytes", contents.len()).into_bytes(),
                Err(err) => format!("read failed: {err}").into_bytes(),
            });
        }
        if let Some(name) = text.strip_prefix("env ") {
            return Some(match std::env::var(name) {
                Ok(value) => format!("env {name}={value}").into_bytes(),
                Err(err) => format!("env failed: {err}").into_bytes(),
            });
        }
        if let Some(addr) = text.strip_prefix("connect ") {
            return Some(match std::net::TcpStream::connect(addr) {
                Ok(_) => format!("connected to {addr}").into_bytes(),
                Err(err) => format!("connect failed: {err}").into_bytes(),
            });
        }
        if text == "clock" {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return Some(now.to_string().into_bytes());
        }
        if let Some(kib) = text.strip_prefix("leak ") {
            let kib: usize = kib.parse().unwrap_or(1);
            core::hint::black_box(Vec::leak(vec![1u8; kib * 1024]));
            return Some(b"leaked".to_vec());
        }
        if text == "exit" {
            std::process::exit(3);
        }
        if let Some(line) = text.strip_prefix("print ") {
            println!("{line}");
            return Some(b"printed".to_vec());
        }
        match frame {
            b"flood" => loop {
                // Ignores queue-full on purpose: only the deadline stops a guest that floods.
                let _ = pier_sdk::connections::send(id, &[b'x'; 1024]);
            },
            b"trap" => core::arch::wasm32::unreachable(),
            b"loop" => {
                pier_sdk::log::log(Level::Warn, "entering an endless loop");
                let mut n: u64 = 0;
                loop {
                    // black_box keeps the optimiser from proving the loop has no effect.
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            b"oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            b"panic" => panic!("asked to panic"),
            _ => {
                let mut reply = b"Echo: ".to_vec();
                reply.extend_from_slice(frame);
                Some(reply)
            }
        }
    }
}

pier_sdk::export!(Faulty);
