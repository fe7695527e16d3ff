//! The built-in echo plugin: every frame is answered with `Echo: ` followed by the frame, the
//! reply format kn-sock's clients and the length-prefixed JSON protocol's `echo` expect. It keeps no state at all, and
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
    fn on_frames(_id: ConnectionId, data: Vec<u8>, lengths: Vec<u32>) -> (Vec<u8>, Vec<i32>) {
        let mut out = Vec::with_capacity(data.len() + lengths.len() * PREFIX.len());
        let mut reply_lengths = Vec::with_capacity(lengths.len());
        let mut start = 0usize;
        for len in lengths {
            let end = (start + len as usize).min(data.len());
            out.extend_from_slice(PREFIX);
            out.extend_from_slice(&data[start..end]);
            reply_lengths.push((PREFIX.len() + end - start) as i32);
            start = end;
        }
        (out, reply_lengths)
    }
}

export!(Echo);
