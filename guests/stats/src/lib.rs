//! The built-in stats plugin: every line received is answered with one line of JSON holding the
//! listener's live figures and the per-connection list, read from the host's `stats` interface.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::pier::plugin::handler::{CloseReason, ConnectionId, Guest, Peer, Refusal};

pier_guest_support::host_figures!();

struct Stats;

impl Guest for Stats {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(None)
    }

    fn on_frame(_id: ConnectionId, _frame: Vec<u8>) -> Option<Vec<u8>> {
        let (listener, connections) = host_figures();
        let now = pier::plugin::clock::now_ms();
        let json = pier_guest_support::stats_json(&listener, &connections, now);
        Some(json.to_string().into_bytes())
    }

    fn on_close(_id: ConnectionId, _reason: CloseReason) {}
}

export!(Stats);
