//! Message framing: how a byte stream is cut into frames and how frames are put back on the wire.
//!
//! The host owns framing so that plugins only ever see whole messages and never more than the
//! listener's maximum frame size. Decoding is check-then-parse on a connection-owned buffer: a
//! frame is taken only once it is complete, and a length prefix above the limit is rejected from
//! its four header bytes, before anything is allocated for the body.
//!
//! - [`http`]: HTTP/1.1 request boundaries (httparse), with the host answering bad requests.
//! - [`websocket`]: RFC 6455 messages after the upgrade (tungstenite's frame headers), with the
//!   host answering pings and closes.

pub mod http;
pub mod websocket;

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, Decoder, LengthDelimitedCodec};

/// The default maximum frame size: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// How many bytes one read of a `raw` connection takes at most; raw frames are one read each, so
/// this is also their size limit when it is below `max_frame`.
const RAW_READ_CHUNK: usize = 64 * 1024;

/// How frames are delimited on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Framing {
    /// Each read from the socket is one frame and each reply goes out in one write, with no
    /// delimiter — what kn-sock's `send-tcp` and other "send once, recv once" clients expect.
    Raw,
    /// Frames end with `\n`; a `\r` before it is dropped too. Replies get a `\n` appended.
    Lines,
    /// Each frame is a 4-byte big-endian length followed by that many bytes (the length-prefixed JSON protocol's framing).
    LengthPrefixed,
    /// Each frame is one whole HTTP/1.1 request (head and body); replies are whole responses,
    /// written as they are. Bad requests are answered by the host (400, 413, 431).
    Http,
    /// WebSocket (RFC 6455): the host answers the HTTP upgrade, then each complete message
    /// (fragments reassembled, unmasked) is a frame and each reply is one message. Pings,
    /// closes and protocol errors are answered by the host.
    #[value(name = "websocket")]
    WebSocket,
}

impl Framing {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Raw => "raw",
            Framing::Lines => "lines",
            Framing::LengthPrefixed => "length-prefixed",
            Framing::Http => "http",
            Framing::WebSocket => "websocket",
        }
    }

    /// A decoder for one connection.
    pub fn decoder(self, max_frame: usize) -> FrameDecoder {
        let inner = match self {
            Framing::Raw => Inner::Raw,
            // One byte over the limit: a `\r\n` line of exactly `max_frame` bytes is within
            // it once its `\r` is stripped; `line` checks the stripped length.
            Framing::Lines => Inner::Lines(AnyDelimiterCodec::new_with_max_length(
                b"\n".to_vec(),
                b"\n".to_vec(),
                max_frame.saturating_add(1),
            )),
            // The header stays in the buffer until its frame is complete (no skip, the length
            // adjusted to cover it), so a stream that ends right after a header still holds
            // bytes and `decode_eof` reports it truncated instead of a clean end.
            Framing::LengthPrefixed => Inner::Length(
                LengthDelimitedCodec::builder()
                    .length_field_type::<u32>()
                    .big_endian()
                    .max_frame_length(max_frame)
                    .num_skip(0)
                    .length_adjustment(4)
                    .new_codec(),
            ),
            Framing::Http => Inner::Http(http::HttpDecoder::new(max_frame)),
            Framing::WebSocket => Inner::WebSocket(websocket::WsCodec::new(
                websocket::Role::Server,
                max_frame,
                websocket::Replies::Auto,
            )),
        };
        FrameDecoder { inner, max_frame }
    }

    /// A decoder for the client end of a connection: the same as [`Framing::decoder`] except for
    /// WebSocket, whose client reads unmasked frames.
    pub fn client_decoder(self, max_frame: usize) -> FrameDecoder {
        match self {
            Framing::WebSocket => FrameDecoder::websocket(
                websocket::Role::Client,
                max_frame,
                websocket::Replies::Auto,
            ),
            other => other.decoder(max_frame),
        }
    }

    /// Appends `frame` to `out` as a client sends it: for WebSocket one masked message (text
    /// when it is UTF-8); for the other framings the same bytes either end sends. A server
    /// encodes its replies through the connection's [`FrameDecoder::encode`], which knows the
    /// WebSocket connection's state.
    pub fn encode(self, frame: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Framing::Raw | Framing::Http => out.extend_from_slice(frame),
            Framing::WebSocket => {
                websocket::WsCodec::new(websocket::Role::Client, 0, websocket::Replies::Auto)
                    .encode(frame, out)
            }
            Framing::Lines => {
                out.reserve(frame.len() + 1);
                out.extend_from_slice(frame);
                out.put_u8(b'\n');
            }
            Framing::LengthPrefixed => {
                let len = u32::try_from(frame.len()).map_err(|_| FrameError::TooLarge {
                    limit: u32::MAX as usize,
                })?;
                out.reserve(frame.len() + 4);
                out.put_u32(len);
                out.extend_from_slice(frame);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Framing::Raw),
            "lines" => Ok(Framing::Lines),
            "length-prefixed" => Ok(Framing::LengthPrefixed),
            "http" => Ok(Framing::Http),
            "websocket" => Ok(Framing::WebSocket),
            other => Err(format!(
                "unknown framing `{other}` (expected raw, lines, length-prefixed, http or websocket)"
            )),
        }
    }
}

/// Why the bytes a client sent cannot be cut into frames. The connection is closed with
/// `close-reason.protocol-error`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A frame (or a length prefix) is larger than the limit.
    #[error("frame larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
    /// An HTTP request the host refuses itself, with the status it answers.
    #[error("HTTP {status}: {reason}")]
    Http {
        /// 400, 413 or 431.
        status: u16,
        /// What was wrong, also sent in the response body.
        reason: String,
    },
    /// A WebSocket frame the host refuses, with the close code it answers.
    #[error("WebSocket close {code}: {reason}")]
    WebSocket {
        /// 1002, 1007 or 1009.
        code: u16,
        /// What was wrong, also sent as the close reason.
        reason: String,
    },
}

impl FrameError {
    /// What to tell the client before closing, where the protocol has a way to say it.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            FrameError::Http { status, reason } => Some(http::error_response(*status, reason)),
            FrameError::WebSocket { code, reason } => Some(websocket::close_frame(*code, reason)),
            _ => None,
        }
    }
}

/// Cuts one connection's incoming bytes into frames.
pub struct FrameDecoder {
    /// The codec for the connection's framing; tokio-util's where one fits.
    inner: Inner,
    /// The limit every frame is checked against.
    max_frame: usize,
}

enum Inner {
    Raw,
    Lines(AnyDelimiterCodec),
    Length(LengthDelimitedCodec),
    Http(http::HttpDecoder),
    WebSocket(websocket::WsCodec),
}

impl FrameDecoder {
    /// A WebSocket decoder for one end of a connection, replying as `replies` says.
    pub fn websocket(role: websocket::Role, max_frame: usize, replies: websocket::Replies) -> Self {
        FrameDecoder {
            inner: Inner::WebSocket(websocket::WsCodec::new(role, max_frame, replies)),
            max_frame,
        }
    }

    /// Appends a reply (or a frame another connection sent) to `out` as it goes on the wire.
    /// For WebSocket this depends on the connection: the kind of the client's last message,
    /// and nothing after a close frame.
    pub fn encode(
        &self,
        framing: Framing,
        frame: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        match &self.inner {
            Inner::WebSocket(codec) => {
                codec.encode(frame, out);
                Ok(())
            }
            _ => framing.encode(frame, out),
        }
    }

    /// Moves the WebSocket pongs owed to `out`, ahead of the replies to the frames decoded.
    pub fn take_pongs(&mut self, out: &mut BytesMut) {
        if let Inner::WebSocket(codec) = &mut self.inner {
            codec.take_pongs(out);
        }
    }

    /// Moves what the protocol itself answers (WebSocket pongs and the close reply) to `out`.
    pub fn take_output(&mut self, out: &mut BytesMut) {
        if let Inner::WebSocket(codec) = &mut self.inner {
            codec.take_output(out);
        }
    }

    /// Bytes of an unfinished message held by the decoder rather than the read buffer (a
    /// fragmented WebSocket message).
    pub fn buffered(&self) -> usize {
        match &self.inner {
            Inner::WebSocket(codec) => codec.buffered(),
            _ => 0,
        }
    }

    /// Says goodbye where the protocol has a way to (a WebSocket close frame with `code`),
    /// appended to `out`; nothing for other framings.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut BytesMut) {
        if let Inner::WebSocket(codec) = &mut self.inner {
            codec.close(code, reason);
            codec.take_output(out);
        }
    }

    /// How many bytes one read should take at most: raw frames are single reads, so their
    /// chunk is capped by the frame limit; other framings take a whole chunk (more frames per
    /// read means bigger batches).
    pub fn read_hint(&self) -> usize {
        match self.inner {
            Inner::Raw => RAW_READ_CHUNK.min(self.max_frame),
            _ => RAW_READ_CHUNK,
        }
    }

    /// Whether the frame last returned asked for the connection to close once it is answered
    /// (HTTP `Connection: close`).
    pub fn close_requested(&self) -> bool {
        match &self.inner {
            Inner::Http(decoder) => decoder.close_requested(),
            Inner::WebSocket(codec) => codec.peer_closed(),
            _ => false,
        }
    }

    /// Takes the next complete frame out of `buf`, if there is one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let limit = self.max_frame;
        match &mut self.inner {
            Inner::Raw => {
                if buf.is_empty() {
                    Ok(None)
                } else {
                    // A read is normally at most `read_hint` bytes, but the buffer's capacity
                    // may exceed the request; never hand out more than the limit at once.
                    let take = buf.len().min(limit);
                    Ok(Some(buf.split_to(take).freeze()))
                }
            }
            Inner::Lines(codec) => match codec.decode(buf) {
                Ok(Some(found)) => line(found, limit).map(Some),
                Ok(None) => Ok(None),
                Err(_) => Err(FrameError::TooLarge { limit }),
            },
            Inner::Length(codec) => match codec.decode(buf) {
                Ok(frame) => Ok(frame.map(|mut frame| {
                    frame.advance(4);
                    frame.freeze()
                })),
                Err(_) => Err(FrameError::TooLarge { limit }),
            },
            Inner::Http(decoder) => decoder.decode(buf),
            Inner::WebSocket(codec) => codec.decode(buf),
        }
    }

    /// Called once the client has closed its side: a final unterminated line is still a frame,
    /// but a half-received length-prefixed frame is an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Inner::Lines(codec) = &mut self.inner {
            // The codec's own `decode_eof` keeps its scan position consistent with `buf`.
            let limit = self.max_frame;
            return match codec.decode_eof(buf) {
                Ok(Some(found)) => line(found, limit).map(Some),
                Ok(None) => Ok(None),
                Err(_) => Err(FrameError::TooLarge { limit }),
            };
        }
        if let Inner::Http(decoder) = &mut self.inner {
            // Nothing more will arrive: parse what there is now, so a malformed head gets its
            // 400 however the bytes were cut, not a bare truncation.
            decoder.parse_now();
        }
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: buf.len(),
            }),
        }
    }
}

/// A line as the plugin gets it: without a final `\r`, and within the limit.
fn line(mut line: Bytes, limit: usize) -> Result<Bytes, FrameError> {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    if line.len() > limit {
        return Err(FrameError::TooLarge { limit });
    }
    Ok(line)
}

#[cfg(test)]
pub(crate) mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, max: usize, input: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut dec = framing.decoder(max);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn lines_split_and_strip_carriage_returns() {
        let frames = decode_all(Framing::Lines, 100, b"a\r\nbc\n\nrest").unwrap();
        assert_eq!(frames, vec![&b"a"[..], b"bc", b""]);
    }

    #[test]
    fn lines_over_the_limit_fail_without_a_newline() {
        // Ten bytes: nine might still be an eight-byte line and the `\r` of its `\r\n`.
        let err = decode_all(Framing::Lines, 8, &[b'x'; 10]).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { limit: 8 });
    }

    #[test]
    fn length_prefix_above_limit_is_rejected_from_the_header() {
        let mut dec = Framing::LengthPrefixed.decoder(1024);
        let mut buf = BytesMut::from(&0xFFFF_FFF0u32.to_be_bytes()[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { limit: 1024 })
        );
        assert!(
            buf.capacity() < 1 << 20,
            "must not reserve the claimed size"
        );
    }

    #[test]
    fn length_prefixed_round_trip() {
        let mut wire = BytesMut::new();
        Framing::LengthPrefixed.encode(b"hello", &mut wire).unwrap();
        Framing::LengthPrefixed.encode(b"", &mut wire).unwrap();
        assert_eq!(&wire[..4], &5u32.to_be_bytes());
        let frames = decode_all(Framing::LengthPrefixed, 16, &wire).unwrap();
        assert_eq!(frames, vec![&b"hello"[..], b""]);
    }

    #[test]
    fn truncated_length_frame_at_eof_is_an_error_but_a_last_line_is_a_frame() {
        let mut dec = Framing::LengthPrefixed.decoder(16);
        let mut buf = BytesMut::from(&[0, 0, 0, 5, b'a'][..]);
        assert!(matches!(
            dec.decode_eof(&mut buf),
            Err(FrameError::Truncated { .. })
        ));

        let mut dec = Framing::Lines.decoder(16);
        let mut buf = BytesMut::from(&b"tail\r"[..]);
        assert_eq!(
            dec.decode_eof(&mut buf).unwrap().as_deref(),
            Some(&b"tail"[..])
        );
    }

    #[test]
    fn decode_eof_can_be_called_repeatedly_after_a_partial_line() {
        let mut dec = Framing::Lines.decoder(16);
        let mut buf = BytesMut::from(&b"a\npartial"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(
            dec.decode_eof(&mut buf).unwrap().as_deref(),
            Some(&b"partial"[..])
        );
        assert_eq!(dec.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_crlf_line_of_exactly_the_limit_is_a_frame() {
        let frames = decode_all(Framing::Lines, 1, b"x\r\ny\n").unwrap();
        assert_eq!(frames, vec![&b"x"[..], b"y"]);
        for over in [&b"xy\n"[..], b"xy\r\n", b"xy\r\r\n"] {
            let err = decode_all(Framing::Lines, 1, over).unwrap_err();
            assert_eq!(err, FrameError::TooLarge { limit: 1 });
        }
        let mut dec = Framing::Lines.decoder(1);
        let mut buf = BytesMut::from(&b"x\r"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(
            dec.decode_eof(&mut buf).unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn a_stream_ending_right_after_a_length_header_is_truncated() {
        let mut dec = Framing::LengthPrefixed.decoder(16);
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(
            dec.decode_eof(&mut buf),
            Err(FrameError::Truncated { buffered: 4 })
        );
    }

    #[test]
    fn raw_takes_everything_buffered() {
        let frames = decode_all(Framing::Raw, 16, b"abc\ndef").unwrap();
        assert_eq!(frames, vec![&b"abc\ndef"[..]]);
    }
}
