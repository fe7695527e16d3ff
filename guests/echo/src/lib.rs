//! The built-in echo plugin: every frame is answered with `Echo: ` followed by the frame, the
//! reply format kn-sock's clients and seed 004's `echo` expect. It keeps no state at all, and
//! takes pipelined frames in batches (`batch-handler`).

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin-batched",
});

use exports::pier::plugin::handler::{CloseReason, ConnectionId, Guest, Peer, Refusal};

/// What every reply starts with.
const PREFIX: &[u8] = b"Echo: ";

struct Echo;

fn echo(frame: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(PREFIX.len() + frame.len());
    reply.extend_from_slice(PREFIX);
    reply.extend_from_slice(frame);
    reply
}

impl Guest for Echo {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(None)
    }

    fn on_frame(_id: ConnectionId, frame: Vec<u8>) -> Option<Vec<u8>> {
        Some(echo(&frame))
    }

    fn on_close(_id: ConnectionId, _reason: CloseReason) {}
}

impl exports::pier::plugin::batch_handler::Guest for Echo {
    fn on_frames(_id: ConnectionId, frames: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
        frames.iter().map(|f| Some(echo(f))).collect()
    }
}

export!(Echo);
