//! The JSON shapes shared by pier's built-in plugins, so the stats object (and its timestamps)
//! is the same whichever plugin reports it. Built on `pier-sdk`'s types; the functions that
//! call the host are the only ones that need a host, so the rest is tested natively.

use std::time::{Duration, UNIX_EPOCH};

use pier_sdk::stats::{self, ConnectionStats, ListenerStats};
use serde_json::{Value, json};

/// Formats milliseconds since the Unix epoch as ISO 8601 UTC with milliseconds and `Z`, the
/// timestamp format of the length-prefixed JSON protocol (`2024-01-01T12:00:00.000Z`).
pub fn iso_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The stats object shared by the stats plugin, `GET /stats` and (its first five fields)
/// lpjson's `server_stats`. Names follow the length-prefixed JSON protocol where it has them.
pub fn stats_json(listener: &ListenerStats, connections: &[ConnectionStats], now_ms: u64) -> Value {
    let mut connections: Vec<&ConnectionStats> = connections.iter().collect();
    connections.sort_by_key(|c| c.peer.id);
    json!({
        "connected_clients": listener.connected,
        "uptime_seconds": listener.uptime_ms / 1000,
        "total_messages": listener.frames_in,
        "total_messages_out": listener.frames_out,
        "bytes_in": listener.bytes_in,
        "bytes_out": listener.bytes_out,
        "server_start_time": iso_millis(listener.started_at_ms),
        "current_time": iso_millis(now_ms),
        "connections": connections.iter().map(|c| json!({
            "id": c.peer.id,
            "address": c.peer.remote_addr,
            "connected_seconds": c.age_ms / 1000,
            "messages_in": c.frames_in,
            "messages_out": c.frames_out,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
        })).collect::<Vec<_>>(),
    })
}

/// [`stats_json`] of the host's figures right now.
pub fn host_stats_json() -> Value {
    stats_json(
        &stats::listener(),
        &stats::connections(),
        pier_sdk::clock::now_ms(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_704_110_400_001), "2024-01-01T12:00:00.001Z");
    }
}
