//! The built-in stats plugin: every line received is answered with one line of JSON holding the
//! listener's live figures and the per-connection list, read from the host's `stats` interface.

use pier_sdk::{ConnectionId, Plugin};

struct Stats;

impl Plugin for Stats {
    fn on_frame(_id: ConnectionId, _frame: &[u8]) -> Option<Vec<u8>> {
        Some(
            pier_guest_support::host_stats_json()
                .to_string()
                .into_bytes(),
        )
    }
}

pier_sdk::export!(Stats);
