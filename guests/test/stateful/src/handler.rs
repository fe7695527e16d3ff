// The body shared by both versions of the stateful test plugin; each version's `lib.rs` sets
// `VERSION` and includes this file, so the two builds differ only in what they call themselves.
//
// - every frame → `VERSION #N: FRAME`, N counting the frames this instance's lineage handled
//   (kept in guest memory, carried across a reload by `snapshot`/`restore`);
// - `config KEY` → the operator's `plugin_config` value, or `unset`;
// - `config` → every key=value, comma separated.

use std::cell::Cell;

use pier_sdk::{ConnectionId, Plugin};
use pier_sdk::config;

thread_local! {
    /// Frames handled; the guest-internal state a reload must not lose.
    static HANDLED: Cell<u64> = const { Cell::new(0) };
}

struct Stateful;

impl Plugin for Stateful {
    fn on_frame(_id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(frame);
        if let Some(key) = text.strip_prefix("config ") {
            return Some(config::get(key).unwrap_or_else(|| "unset".into()).into_bytes());
        }
        if text == "config" {
            let all: Vec<String> = config::all()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Some(all.join(",").into_bytes());
        }
        let n = HANDLED.with(|h| {
            h.set(h.get() + 1);
            h.get()
        });
        let mut reply = format!("{VERSION} #{n}: ").into_bytes();
        reply.extend_from_slice(frame);
        Some(reply)
    }
}

impl pier_sdk::Stateful for Stateful {
    fn snapshot() -> Vec<u8> {
        HANDLED.with(|h| h.get()).to_le_bytes().to_vec()
    }

    fn restore(state: Vec<u8>) {
        // A snapshot from an unknown encoding starts the count afresh rather than trapping.
        if let Ok(bytes) = <[u8; 8]>::try_from(state.as_slice()) {
            HANDLED.with(|h| h.set(u64::from_le_bytes(bytes)));
        }
    }
}

pier_sdk::export!(Stateful, stateful);
