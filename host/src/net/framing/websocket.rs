//! WebSocket message framing (RFC 6455) after the upgrade: frames in, whole messages out.
//!
//! tungstenite parses and formats frame headers ([`FrameHeader::parse`] / [`FrameHeader::format`]);
//! everything else — buffering, unmasking, reassembling fragments, control frames, UTF-8 and
//! size checks — is here, on pier's own read buffer, so a WebSocket connection goes through the
//! same read/decode/batch/write path as every other framing. (tungstenite's `WebSocket` owns the
//! stream and its own buffers and would take that path over.)
//!
//! The host answers the protocol itself: pings get pongs, a close gets the closing reply, and a
//! broken frame gets a close with the RFC's status code (1002 protocol error, 1007 bad UTF-8,
//! 1009 too big) — none of that reaches the plugin, which sees one frame per complete data
//! message. Sizes are checked from headers: a frame whose payload would take the message past
//! `max_frame` is refused before any of it is buffered.
//!
//! The decoder works in both roles: as the server it requires masked frames and sends unmasked
//! ones; as a client (`pier send`, `pier bench`) the other way round.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::FrameError;

/// The most bytes a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// Close status codes pier sends (RFC 6455 §7.4.1).
pub mod code {
    /// The purpose of the connection is fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A policy refused the connection (the plugin refused it, or it idled too long).
    pub const POLICY: u16 = 1008;
    /// A message above the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server met an unexpected condition (the plugin faulted).
    pub const INTERNAL: u16 = 1011;
}

/// Which end of the connection the codec is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// pier serving clients: incoming frames must be masked, outgoing are not.
    Server,
    /// pier's own client tools: incoming frames must not be masked, outgoing are.
    Client,
}

/// Whether replies go out as text or binary messages (pier.toml `websocket.replies`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replies {
    /// Text when the reply is valid UTF-8 and the client's last message was text (or it has
    /// sent none yet); binary otherwise. A text client gets text back, a binary client binary.
    #[default]
    Auto,
    /// Text whenever the reply is valid UTF-8 (never invalid text), else binary.
    Text,
    /// Always binary.
    Binary,
}

impl std::str::FromStr for Replies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Replies::Auto),
            "text" => Ok(Replies::Text),
            "binary" => Ok(Replies::Binary),
            other => Err(format!(
                "unknown websocket.replies `{other}` (expected auto, text or binary)"
            )),
        }
    }
}

/// A fragmented data message being reassembled.
struct Partial {
    text: bool,
    data: BytesMut,
    /// Bytes of `data` known to be valid UTF-8 so far (text messages are checked as their
    /// fragments arrive, so bad text fails at once, not at the end of a long message).
    checked: usize,
}

/// One connection's WebSocket state after the handshake.
pub struct WsCodec {
    role: Role,
    max_message: usize,
    replies: Replies,
    partial: Option<Partial>,
    /// The kind of the last complete message received (for [`Replies::Auto`]).
    last_text: bool,
    /// Pongs waiting to be written.
    output: BytesMut,
    /// The close frame waiting to be written (after the replies owed before it).
    close_out: BytesMut,
    /// The peer's close frame arrived: nothing after it is read.
    peer_closed: bool,
    /// A close frame was written: no data frame may follow it.
    close_sent: bool,
}

impl WsCodec {
    /// A codec for one connection in `role`, accepting messages up to `max_message` bytes.
    pub fn new(role: Role, max_message: usize, replies: Replies) -> Self {
        WsCodec {
            role,
            max_message,
            replies,
            partial: None,
            last_text: true,
            output: BytesMut::new(),
            close_out: BytesMut::new(),
            peer_closed: false,
            close_sent: false,
        }
    }

    /// Whether the peer's close frame arrived (the connection ends once what is owed is written).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes of a fragmented message held outside the read buffer.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Moves the pongs owed to `out`: they may go ahead of replies, as soon as practical.
    pub fn take_pongs(&mut self, out: &mut BytesMut) {
        if !self.output.is_empty() {
            out.extend_from_slice(&self.output);
            self.output.clear();
        }
    }

    /// Moves everything the protocol owes to `out`: pongs, then the close frame.
    pub fn take_output(&mut self, out: &mut BytesMut) {
        self.take_pongs(out);
        if !self.close_out.is_empty() {
            out.extend_from_slice(&self.close_out);
            self.close_out.clear();
        }
    }

    /// Takes the next complete data message out of `buf`, answering control frames on the way.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            if self.peer_closed {
                // RFC 6455 §5.5.1: nothing after a close frame is data.
                buf.clear();
                return Ok(None);
            }
            let mut cursor = Cursor::new(&buf[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(err) => return Err(protocol(&format!("{err}"))),
            };
            let head = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            self.check(&header, length)?;
            // Checked against the limit above, so this fits and is at most `max_message`.
            let length = length as usize;
            if buf.len() - head < length {
                return Ok(None);
            }
            buf.advance(head);
            let mut payload = buf.split_to(length);
            if let Some(mask) = header.mask {
                unmask(&mut payload, mask);
            }
            if let Some(message) = self.take(&header, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Refuses a frame from its header alone, before its payload is buffered.
    fn check(&self, header: &FrameHeader, length: u64) -> Result<(), FrameError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(protocol("reserved bits set without a negotiated extension"));
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(protocol("client frame not masked")),
            (Role::Client, true) => return Err(protocol("server frame masked")),
            _ => {}
        }
        match header.opcode {
            OpCode::Control(_) => {
                if length > MAX_CONTROL {
                    return Err(protocol("control frame longer than 125 bytes"));
                }
                if !header.is_final {
                    return Err(protocol("fragmented control frame"));
                }
            }
            OpCode::Data(data) => {
                match (data, &self.partial) {
                    (Data::Continue, None) => {
                        return Err(protocol("continuation frame without a message to continue"));
                    }
                    (Data::Text | Data::Binary, Some(_)) => {
                        return Err(protocol("new message before the fragmented one ended"));
                    }
                    _ => {}
                }
                let so_far = self.buffered() as u64;
                if so_far.saturating_add(length) > self.max_message as u64 {
                    return Err(FrameError::WebSocket {
                        code: code::TOO_BIG,
                        reason: format!("message larger than the {}-byte limit", self.max_message),
                    });
                }
            }
        }
        Ok(())
    }

    /// Handles one whole frame; a data message when this frame completed one.
    fn take(
        &mut self,
        header: &FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Bytes>, FrameError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => {
                if !self.close_sent {
                    self.push_frame(OpCode::Control(Control::Pong), &payload);
                }
                Ok(None)
            }
            OpCode::Control(Control::Pong) => Ok(None),
            OpCode::Control(Control::Close) => {
                let code = close_code(&payload)?;
                self.peer_closed = true;
                self.close(code.unwrap_or(code::NORMAL), "");
                Ok(None)
            }
            OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
                Err(protocol(&format!("unknown opcode {op}")))
            }
            OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                let text = header.opcode == OpCode::Data(Data::Text);
                if text && std::str::from_utf8(&payload).is_err() {
                    return Err(invalid_text());
                }
                self.last_text = text;
                Ok(Some(payload.freeze()))
            }
            OpCode::Data(kind) => {
                let partial = match kind {
                    Data::Continue => match self.partial.as_mut() {
                        Some(partial) => {
                            partial.data.extend_from_slice(&payload);
                            partial
                        }
                        None => return Err(protocol("continuation without a message")),
                    },
                    _ => self.partial.insert(Partial {
                        text: kind == Data::Text,
                        data: payload,
                        checked: 0,
                    }),
                };
                if partial.text {
                    check_text_so_far(partial, header.is_final)?;
                }
                if !header.is_final {
                    return Ok(None);
                }
                let Some(done) = self.partial.take() else {
                    return Ok(None);
                };
                self.last_text = done.text;
                Ok(Some(done.data.freeze()))
            }
        }
    }

    /// Appends `message` to `out` as one data message: text or binary as [`Replies`] says.
    /// Nothing is written after a close frame.
    pub fn encode(&self, message: &[u8], out: &mut BytesMut) {
        if self.close_sent {
            return;
        }
        let text = match self.replies {
            Replies::Binary => false,
            Replies::Text => std::str::from_utf8(message).is_ok(),
            Replies::Auto => self.last_text && std::str::from_utf8(message).is_ok(),
        };
        let opcode = if text { Data::Text } else { Data::Binary };
        format_frame(self.role, OpCode::Data(opcode), message, out);
    }

    /// Queues a close frame with `code` and `reason` (cut to fit a control frame), once.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut reason = reason;
        while reason.len() > MAX_CONTROL as usize - 2 {
            let mut end = reason.len() - 1;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason = &reason[..end];
        }
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        format_frame(
            self.role,
            OpCode::Control(Control::Close),
            &payload,
            &mut self.close_out,
        );
        self.close_sent = true;
    }

    fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        format_frame(self.role, opcode, payload, &mut self.output);
    }
}

/// Appends one final frame: unmasked from the server, masked with a fresh random key from a
/// client (RFC 6455 §5.3).
pub fn format_frame(role: Role, opcode: OpCode, payload: &[u8], out: &mut BytesMut) {
    let mask = (role == Role::Client).then(rand::random::<[u8; 4]>);
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    let length = payload.len() as u64;
    out.reserve(header.len(length) + payload.len());
    // Writing into memory cannot fail.
    let _ = header.format(length, &mut (&mut *out).writer());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        unmask(&mut out[start..], mask);
    }
}

/// XORs `data` with the 4-byte key, in place (masking and unmasking are the same operation).
/// tungstenite's own routine is private to it; eight bytes at a time keeps this off the profile.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Checks the text received so far: a sequence cut at the end may still be completed by the next
/// fragment, but an invalid one fails now.
fn check_text_so_far(partial: &mut Partial, last: bool) -> Result<(), FrameError> {
    match std::str::from_utf8(&partial.data[partial.checked..]) {
        Ok(_) => {
            partial.checked = partial.data.len();
            Ok(())
        }
        Err(err) if err.error_len().is_none() && !last => {
            partial.checked += err.valid_up_to();
            Ok(())
        }
        Err(_) => Err(invalid_text()),
    }
}

/// The status code of a close frame's payload: none, or a code a peer may send, with a UTF-8
/// reason (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(protocol(&format!("close code {code} may not be sent")));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(invalid_text());
            }
            Ok(Some(code))
        }
    }
}

fn protocol(reason: &str) -> FrameError {
    FrameError::WebSocket {
        code: code::PROTOCOL,
        reason: reason.to_string(),
    }
}

fn invalid_text() -> FrameError {
    FrameError::WebSocket {
        code: code::INVALID_DATA,
        reason: "text message is not valid UTF-8".into(),
    }
}

/// The close frame that tells the client why the host ended the connection.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut codec = WsCodec::new(Role::Server, 0, Replies::Auto);
    codec.close(code, reason);
    codec.close_out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame with the given first byte (FIN, RSV, opcode) and a fixed mask.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode: OpCode::from(first & 0x0F),
            mask: Some(mask),
        };
        header
            .format(payload.len() as u64, &mut (&mut out).writer())
            .unwrap();
        let start = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[start..], mask);
        out.to_vec()
    }

    fn server(max: usize) -> WsCodec {
        WsCodec::new(Role::Server, max, Replies::Auto)
    }

    fn error_code(result: Result<Option<Bytes>, FrameError>) -> u16 {
        match result {
            Err(FrameError::WebSocket { code, .. }) => code,
            other => panic!("expected a close code, got {other:?}"),
        }
    }

    #[test]
    fn a_masked_text_message_is_one_frame() {
        let mut codec = server(1024);
        let mut buf = BytesMut::from(&client_frame(0x81, b"hello")[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn fragments_with_an_interleaved_ping_make_one_message_and_a_pong() {
        let mut codec = server(1024);
        let mut wire = client_frame(0x01, b"hel");
        wire.extend(client_frame(0x89, b"p"));
        wire.extend(client_frame(0x80, b"lo"));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        let mut out = BytesMut::new();
        codec.take_output(&mut out);
        assert_eq!(&out[..], &[0x8A, 1, b'p']);
    }

    #[test]
    fn a_frame_arriving_byte_by_byte_is_decoded_once_complete() {
        let mut codec = server(1024);
        let wire = client_frame(0x82, &[7; 300]);
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == wire.len() - 1);
        }
    }

    #[test]
    fn protocol_violations_get_their_close_codes() {
        let cases: [(&[u8], u16); 6] = [
            (&[0x81, 0x02, b'h', b'i'], code::PROTOCOL), // unmasked
            (&client_frame(0xC1, b"x"), code::PROTOCOL), // rsv1
            (&client_frame(0x83, b"x"), code::PROTOCOL), // opcode 3
            (&client_frame(0x80, b"x"), code::PROTOCOL), // continuation first
            (&client_frame(0x09, b"x"), code::PROTOCOL), // fragmented ping
            (&client_frame(0x81, &[0xFF, 0xFE]), code::INVALID_DATA),
        ];
        for (wire, expected) in cases {
            let mut buf = BytesMut::from(wire);
            assert_eq!(
                error_code(server(1024).decode(&mut buf)),
                expected,
                "{wire:?}"
            );
        }
    }

    #[test]
    fn bad_utf8_fails_in_the_fragment_that_carries_it() {
        let mut codec = server(1024);
        // "é" split over two fragments is fine…
        let mut buf = BytesMut::from(&client_frame(0x01, &[0xC3])[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        let mut buf = BytesMut::from(&client_frame(0x00, &[0xA9])[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        // …a byte that can never start a character fails before the message ends.
        let mut buf = BytesMut::from(&client_frame(0x00, &[0xFF])[..]);
        assert_eq!(error_code(codec.decode(&mut buf)), code::INVALID_DATA);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_header() {
        let mut codec = server(1000);
        // A 64-bit length of 2^40 and no payload.
        let mut wire = vec![0x82, 0xFF];
        wire.extend_from_slice(&(1u64 << 40).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(error_code(codec.decode(&mut buf)), code::TOO_BIG);
        assert!(
            buf.capacity() < 1 << 20,
            "must not reserve the claimed size"
        );
        // Fragments count together.
        let mut codec = server(1000);
        let mut buf = BytesMut::from(&client_frame(0x02, &[0; 600])[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        let mut buf = BytesMut::from(&client_frame(0x80, &[0; 600])[..]);
        assert_eq!(error_code(codec.decode(&mut buf)), code::TOO_BIG);
    }

    #[test]
    fn a_close_is_answered_and_nothing_after_it_is_read_or_written() {
        let mut codec = server(1024);
        let mut wire = client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']);
        wire.extend(client_frame(0x81, b"late"));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(codec.peer_closed());
        let mut out = BytesMut::new();
        codec.take_output(&mut out);
        assert_eq!(&out[..], &[0x88, 2, 0x03, 0xE8]);
        codec.encode(b"after", &mut out);
        assert_eq!(out.len(), 4, "no data frame after the close");
        for bad in [&[0x03, 0xED][..], &[0x00], &[0x03, 0xE8, 0xFF]] {
            let mut buf = BytesMut::from(&client_frame(0x88, bad)[..]);
            assert!(server(16).decode(&mut buf).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_follow_the_kind_of_the_last_message() {
        let mut codec = server(1024);
        let mut out = BytesMut::new();
        codec.encode(b"hi", &mut out);
        assert_eq!(out[0], 0x81, "text before any message");
        let mut buf = BytesMut::from(&client_frame(0x82, b"\x00")[..]);
        codec.decode(&mut buf).unwrap();
        out.clear();
        codec.encode(b"hi", &mut out);
        assert_eq!(out[0], 0x82, "binary after a binary message");
        let forced = WsCodec::new(Role::Server, 16, Replies::Text);
        out.clear();
        forced.encode(&[0xFF], &mut out);
        assert_eq!(out[0], 0x82, "never invalid text");
    }

    #[test]
    fn a_client_codec_masks_and_reads_the_servers_frames() {
        let client = WsCodec::new(Role::Client, 1 << 20, Replies::Auto);
        let mut wire = BytesMut::new();
        client.encode(&[9; 70_000], &mut wire);
        let mut buf = wire.clone();
        assert_eq!(
            server(1 << 20).decode(&mut buf).unwrap().map(|m| m.len()),
            Some(70_000)
        );
        let mut reply = BytesMut::new();
        server(16).encode(b"back", &mut reply);
        let mut client = WsCodec::new(Role::Client, 16, Replies::Auto);
        assert_eq!(
            client.decode(&mut reply).unwrap().as_deref(),
            Some(&b"back"[..])
        );
    }
}
