//! The built-in length-prefixed JSON protocol plugin, byte-compatible: frames are a
//! u32 big-endian length (added and removed by the host's `length-prefixed` framing) and a UTF-8
//! JSON object with a `type`.
//!
//! `ping` → `pong`; `echo` → `echo_response`; `broadcast` → every other client gets
//! `broadcast`, the sender `broadcast_sent`; `get_stats` → `server_stats`. Anything wrong with a
//! frame (empty, not UTF-8, not JSON, not an object, no or unknown `type`) is answered with
//! `{"type":"error","error":...}` and the connection stays usable.

use pier_guest_support::iso_millis;
use pier_sdk::{ConnectionId, Plugin};
use pier_sdk::{clock, connections, stats};
use serde_json::{Map, Value, json};

struct LpJson;

fn client_id(id: ConnectionId) -> String {
    connections::lookup(id)
        .map(|p| p.remote_addr)
        .unwrap_or_else(|| format!("connection-{id}"))
}

fn error(message: impl Into<String>) -> Value {
    json!({ "type": "error", "error": message.into(), "timestamp": iso_millis(clock::now_ms()) })
}

/// Parses a frame into a message object, or says what is wrong with it.
fn parse(frame: &[u8]) -> Result<Map<String, Value>, Value> {
    if frame.is_empty() {
        return Err(error("empty frame: expected a JSON object"));
    }
    let text = std::str::from_utf8(frame).map_err(|_| error("frame is not valid UTF-8"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(error("message must be a JSON object")),
        Err(e) => Err(error(format!("invalid JSON: {e}"))),
    }
}

fn handle(id: ConnectionId, message: &Map<String, Value>) -> Value {
    let now = iso_millis(clock::now_ms());
    let Some(kind) = message.get("type").and_then(Value::as_str) else {
        return error("message has no string \"type\"");
    };
    let content = message.get("content").cloned().unwrap_or(Value::Null);
    match kind {
        "ping" => json!({
            "type": "pong",
            "ping_timestamp": message.get("timestamp").cloned().unwrap_or(Value::Null),
            "pong_timestamp": now,
            "client_id": client_id(id),
        }),
        "echo" => json!({
            "type": "echo_response",
            "content": content,
            "timestamp": now,
            "echoed_by": "pier",
        }),
        "broadcast" => {
            let note = json!({
                "type": "broadcast",
                "content": content,
                "from": client_id(id),
                "timestamp": now,
            });
            let recipients = connections::broadcast(note.to_string().as_bytes(), Some(id));
            json!({ "type": "broadcast_sent", "recipients": recipients, "timestamp": now })
        }
        "get_stats" => {
            let l = stats::listener();
            json!({
                "type": "server_stats",
                "connected_clients": l.connected,
                "uptime_seconds": l.uptime_ms / 1000,
                "total_messages": l.frames_in,
                "server_start_time": iso_millis(l.started_at_ms),
                "current_time": now,
            })
        }
        other => error(format!("unknown message type: {other}")),
    }
}

impl Plugin for LpJson {
    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let reply = match parse(frame) {
            Ok(message) => handle(id, &message),
            Err(err) => err,
        };
        Some(reply.to_string().into_bytes())
    }
}

pier_sdk::export!(LpJson);
