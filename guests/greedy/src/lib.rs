//! Test plugin: echoes like the echo plugin, and on `kv KEY` reads a key-value store through
//! `wasi:keyvalue/store`, an import no pier listener grants. Loading it for a listener must be
//! refused with that import named.

wit_bindgen::generate!({
    inline: r#"
        package test:greedy;

        world greedy {
            include pier:plugin/plugin@0.1.0;
            import wasi:keyvalue/store@0.2.0-draft;
        }
    "#,
    path: ["../../wit", "wit"],
    world: "test:greedy/greedy",
    generate_all,
});

use exports::pier::plugin::handler::{CloseReason, ConnectionId, Guest, Peer, Refusal};

struct Greedy;

impl Guest for Greedy {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(None)
    }

    fn on_frame(_id: ConnectionId, frame: Vec<u8>) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(&frame);
        if let Some(key) = text.strip_prefix("kv ") {
            let value = wasi::keyvalue::store::get(key);
            return Some(value.unwrap_or_default().into_bytes());
        }
        Some([b"Echo: ".as_slice(), &frame].concat())
    }

    fn on_close(_id: ConnectionId, _reason: CloseReason) {}
}

export!(Greedy);
