//! Test plugin: echoes like the echo plugin, and on `kv KEY` reads a key-value store through
//! `wasi:keyvalue/store`, an import no pier listener grants. Loading it for a listener must be
//! refused with that import named.

/// The one import pier's contract lacks; the rest comes from the SDK.
mod keyvalue {
    wit_bindgen::generate!({
        inline: "package test:greedy; world greedy { import wasi:keyvalue/store@0.2.0-draft; }",
        path: "wit",
        world: "test:greedy/greedy",
        generate_all,
    });
}

use keyvalue::wasi::keyvalue::store;
use pier_sdk::{ConnectionId, Plugin};

struct Greedy;

impl Plugin for Greedy {
    fn on_frame(_id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(frame);
        if let Some(key) = text.strip_prefix("kv ") {
            let value = store::get(key);
            return Some(value.unwrap_or_default().into_bytes());
        }
        Some([b"Echo: ", frame].concat())
    }
}

pier_sdk::export!(Greedy);
