//! A test plugin that misbehaves on request, so the host's fault isolation can be tested over
//! real sockets. Frames are echoed like the echo plugin, except these magic frames:
//!
//! - `trap`: executes `unreachable`, a guest trap;
//! - `loop`: spins forever, until the host's call deadline interrupts it;
//! - `oom`: grows memory without bound, until the host's memory limit refuses it;
//! - `panic`: a Rust panic (which, without WASI stderr, also ends in a trap).

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::pier::plugin::handler::{CloseReason, ConnectionId, Guest, Peer, Refusal};
use pier::plugin::types::Level;

struct Faulty;

impl Guest for Faulty {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(None)
    }

    fn on_frame(_id: ConnectionId, frame: Vec<u8>) -> Option<Vec<u8>> {
        match frame.as_slice() {
            b"trap" => core::arch::wasm32::unreachable(),
            b"loop" => {
                pier::plugin::log::log(Level::Warn, "entering an endless loop");
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
                reply.extend_from_slice(&frame);
                Some(reply)
            }
        }
    }

    fn on_close(_id: ConnectionId, _reason: CloseReason) {}
}

export!(Faulty);
