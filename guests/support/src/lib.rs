//! Helpers shared by pier's built-in plugins. Plain Rust with no WIT bindings: each plugin
//! converts its own generated types into the figures here, so the JSON shapes (and timestamps)
//! are the same whichever plugin reports them.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

/// Formats milliseconds since the Unix epoch as ISO 8601 UTC with milliseconds and `Z`, the
/// timestamp format of the length-prefixed JSON protocol (`2024-01-01T12:00:00.000Z`).
pub fn iso_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Listener-wide figures, as reported by the host's `stats.listener`.
#[derive(Clone, Debug, Default)]
pub struct ListenerFigures {
    /// Connections open now.
    pub connected: u32,
    /// Milliseconds since the listener started.
    pub uptime_ms: u64,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Frames received from clients.
    pub frames_in: u64,
    /// Frames written to clients.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// One connection's figures, as reported by the host's `stats.connections`.
#[derive(Clone, Debug, Default)]
pub struct ConnectionFigures {
    /// Connection id.
    pub id: u64,
    /// The client's address.
    pub remote_addr: String,
    /// Milliseconds since it connected.
    pub age_ms: u64,
    /// Frames received from it.
    pub frames_in: u64,
    /// Frames written to it.
    pub frames_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
}

/// The stats object shared by the stats plugin, `GET /stats` and (its first five fields)
/// lpjson's `server_stats`. Names follow the length-prefixed JSON protocol where it has them.
pub fn stats_json(
    listener: &ListenerFigures,
    connections: &[ConnectionFigures],
    now_ms: u64,
) -> Value {
    let mut connections: Vec<&ConnectionFigures> = connections.iter().collect();
    connections.sort_by_key(|c| c.id);
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
            "id": c.id,
            "address": c.remote_addr,
            "connected_seconds": c.age_ms / 1000,
            "messages_in": c.frames_in,
            "messages_out": c.frames_out,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
        })).collect::<Vec<_>>(),
    })
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

/// Defines `fn host_figures() -> (ListenerFigures, Vec<ConnectionFigures>)` in a plugin crate,
/// reading the host's `stats` interface through that crate's own generated bindings (which is
/// why this is a macro: each plugin has its own copy of the WIT types).
#[macro_export]
macro_rules! host_figures {
    () => {
        fn host_figures() -> ($crate::ListenerFigures, Vec<$crate::ConnectionFigures>) {
            let l = pier::plugin::stats::listener();
            let listener = $crate::ListenerFigures {
                connected: l.connected,
                uptime_ms: l.uptime_ms,
                started_at_ms: l.started_at_ms,
                frames_in: l.frames_in,
                frames_out: l.frames_out,
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
            };
            let connections = pier::plugin::stats::connections()
                .into_iter()
                .map(|c| $crate::ConnectionFigures {
                    id: c.peer.id,
                    remote_addr: c.peer.remote_addr,
                    age_ms: c.age_ms,
                    frames_in: c.frames_in,
                    frames_out: c.frames_out,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                })
                .collect();
            (listener, connections)
        }
    };
}
