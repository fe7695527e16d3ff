//! Property tests for the framing decoders every client byte passes through before a plugin sees
//! it: `lines`, `length-prefixed`, `raw` and `http` (TLS client hellos are in `tls::props`, which
//! shares the case count, mutations and read splits defined here).
//!
//! Each decoder is driven the way `Connection` drives it: one read appended to the connection's
//! buffer, `decode` until it has nothing more, the buffer replaced by a fresh one when empty, and
//! `decode_eof` at end of stream. Reads are cut at random boundaries but never exceed the
//! decoder's `read_hint`, as the socket read never does. Inputs are random bytes, bytes drawn
//! from a protocol-heavy alphabet, and valid encodings (made by the framing's encoder, or for
//! HTTP by a request builder) that are then mutated: bit flips, byte changes, truncations,
//! insertions, deletions, duplicated segments. The properties:
//!
//! - nothing panics;
//! - no frame is longer than `max_frame` (for `http`, than [`MAX_HEAD`] + `max_frame`: the head
//!   has its own limit and `max_frame` bounds the body);
//! - after a read is decoded the buffer holds at most that frame bound plus the read size, and
//!   at end of stream it is empty unless the outcome is an error;
//! - the same bytes cut into reads differently give the same frames and the same ending (end of
//!   stream, an HTTP close, or the same error); for `raw`, where a frame *is* a read, the same
//!   bytes in the same order, one frame per read;
//! - valid encodings round-trip, and invalid ones end where a model of the limits says they do.
//!
//! Cases per property: `PIER_PROPTEST_CASES` (default [`DEFAULT_CASES`]), so CI runs a few
//! thousand and a long run is one variable away. The seed is fixed unless `PIER_PROPTEST_SEED`
//! gives another (a number, or `random`), so CI runs the same cases every time. Failures are
//! not persisted to files: proptest prints the shrunk case, and a fixed regression belongs in a
//! plain unit test.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{RngSeed, TestCaseError};

use super::http::MAX_HEAD;
use super::{FrameDecoder, FrameError, Framing};

/// Cases per property when `PIER_PROPTEST_CASES` is unset: a few seconds per decoder in
/// `--release`, so CI stays fast.
pub(crate) const DEFAULT_CASES: u32 = 4096;

/// The proptest settings every property here and in `tls::props` uses.
pub(crate) fn config() -> ProptestConfig {
    config_scaled(1)
}

/// The seed when `PIER_PROPTEST_SEED` is unset.
const DEFAULT_SEED: u64 = 22;

/// Like [`config`] with `1/divisor` of the cases, for properties whose every case is large.
pub(crate) fn config_scaled(divisor: u32) -> ProptestConfig {
    let cases = std::env::var("PIER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    // A fixed seed unless asked otherwise: every `cargo test` runs the same cases, so a failure
    // is a bug to look at, never a flake. Long runs explore with `random` or another number.
    let rng_seed = match std::env::var("PIER_PROPTEST_SEED")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("random") => RngSeed::Random,
        Some(seed) => RngSeed::Fixed(seed.parse().unwrap_or(DEFAULT_SEED)),
        None => RngSeed::Fixed(DEFAULT_SEED),
    };
    ProptestConfig {
        cases: (cases / divisor).max(1),
        rng_seed,
        // The shrunk case is printed; files under src/ would be noise in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----- Mutations -----

/// Bytes that mean something to one of the decoders, for insertions and alphabets.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r",
    b"\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"\0\0\0\0",
    b"\xff\xff\xff\xff",
    b"\0\0\0\x05",
    b":",
    b";",
    b" ",
    b"\t",
    b",",
    b"chunked",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"GET / HTTP/1.1\r\n",
    b"ffffffffffffffff",
    b"\x16\x03\x01",
];

/// One change to an otherwise valid input.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    FlipBit {
        at: Index,
        bit: u8,
    },
    SetByte {
        at: Index,
        byte: u8,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Delete {
        at: Index,
        len: usize,
    },
    /// Copies `len` bytes from `from` to `to`, `times` times over.
    Duplicate {
        from: Index,
        len: usize,
        to: Index,
        times: usize,
    },
}

fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 1..8),
        select(TOKENS).prop_map(<[u8]>::to_vec),
    ]
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        (any::<Index>(), insertion()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<Index>(), 1usize..64, any::<Index>(), 1usize..4).prop_map(
            |(from, len, to, times)| Mutation::Duplicate {
                from,
                len,
                to,
                times
            }
        ),
    ]
}

/// Zero to four mutations, most often one or two.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 0..4)
}

pub(crate) fn mutate(input: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = input.len();
        if len == 0 {
            // Only an insertion means anything on nothing.
            if let Mutation::Insert { bytes, .. } = m {
                input.extend_from_slice(bytes);
            }
            continue;
        }
        match m {
            Mutation::FlipBit { at, bit } => input[at.index(len)] ^= 1 << bit,
            Mutation::SetByte { at, byte } => input[at.index(len)] = *byte,
            Mutation::Truncate { at } => input.truncate(at.index(len)),
            Mutation::Insert { at, bytes } => {
                let at = at.index(len + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len: n } => {
                let at = at.index(len);
                input.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate {
                from,
                len: n,
                to,
                times,
            } => {
                let from = from.index(len);
                let segment = input[from..(from + n).min(len)].to_vec();
                let to = to.index(len + 1);
                let repeated = segment.iter().copied().cycle().take(segment.len() * times);
                input.splice(to..to, repeated);
            }
        }
    }
}

// ----- Read boundaries -----

/// Where a byte stream is cut into reads.
#[derive(Debug, Clone)]
pub(crate) enum Split {
    /// At these positions (scaled to the input's length).
    Cuts(Vec<Index>),
    /// Every `n` bytes; 1 is byte-at-a-time.
    Every(usize),
}

/// Most reads a split makes of one input (beyond those the read size forces), so a large input
/// cut byte-at-a-time does not turn a case into a benchmark of rescans.
const MAX_READS: usize = 4096;

pub(crate) fn split() -> impl Strategy<Value = Split> {
    prop_oneof![
        3 => vec(any::<Index>(), 0..32).prop_map(Split::Cuts),
        1 => (1usize..4).prop_map(Split::Every),
        1 => (4usize..600).prop_map(Split::Every),
    ]
}

/// The lengths of the reads `split` makes of `len` bytes, none longer than `max_read`.
pub(crate) fn read_sizes(split: &Split, len: usize, max_read: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = match split {
        Split::Cuts(at) => at.iter().map(|i| i.index(len + 1)).collect(),
        Split::Every(n) => {
            let step = (*n).max(len / MAX_READS + 1);
            (step..len).step_by(step).collect()
        }
    };
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    let mut sizes = Vec::with_capacity(cuts.len());
    for w in cuts.windows(2) {
        let mut piece = w[1] - w[0];
        while piece > 0 {
            let n = piece.min(max_read);
            sizes.push(n);
            piece -= n;
        }
    }
    sizes
}

// ----- Driving a decoder as the connection does -----

/// How a decoded stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// End of stream with nothing left over.
    Eof,
    /// A frame asked for the connection to close (HTTP); nothing after it is decoded.
    Closed,
    /// The decoder refused the stream.
    Error(FrameError),
}

/// Everything a connection would have handed the plugin, and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: End,
}

/// The longest frame a decoder may return.
fn frame_bound(framing: Framing, max_frame: usize) -> usize {
    match framing {
        Framing::Http => MAX_HEAD + max_frame,
        _ => max_frame,
    }
}

/// Feeds `input` to a fresh decoder in the reads `split` makes, checking the size bounds as it
/// goes; the frames are copied out so the buffer's allocation is the connection's alone, as it
/// is once a batch has been handled.
fn drive(
    framing: Framing,
    max_frame: usize,
    input: &[u8],
    split: &Split,
) -> Result<Outcome, TestCaseError> {
    let mut decoder = framing.decoder(max_frame);
    let read_size = decoder.read_hint();
    let frame_limit = frame_bound(framing, max_frame);
    let held_limit = frame_limit + read_size;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    for n in read_sizes(split, input.len(), read_size) {
        buf.extend_from_slice(&input[offset..offset + n]);
        offset += n;
        if let Some(end) = decode_read(&mut decoder, &mut buf, false, &mut frames, frame_limit)? {
            return Ok(Outcome { frames, end });
        }
        prop_assert!(
            buf.len() <= held_limit,
            "{framing}: {} bytes held after a read, limit {held_limit}",
            buf.len()
        );
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
    let end = decode_read(&mut decoder, &mut buf, true, &mut frames, frame_limit)?;
    if end.is_none() {
        prop_assert!(
            buf.is_empty(),
            "{framing}: {} bytes left at end of stream without an error",
            buf.len()
        );
    }
    Ok(Outcome {
        frames,
        end: end.unwrap_or(End::Eof),
    })
}

/// Decodes everything one read made available; `Some` once the stream is over.
fn decode_read(
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
    eof: bool,
    frames: &mut Vec<Vec<u8>>,
    frame_limit: usize,
) -> Result<Option<End>, TestCaseError> {
    loop {
        let decoded = if eof {
            decoder.decode_eof(buf)
        } else {
            decoder.decode(buf)
        };
        match decoded {
            Ok(Some(frame)) => {
                prop_assert!(
                    frame.len() <= frame_limit,
                    "a {}-byte frame, limit {frame_limit}",
                    frame.len()
                );
                frames.push(frame.to_vec());
                if decoder.close_requested() {
                    return Ok(Some(End::Closed));
                }
            }
            Ok(None) => return Ok(None),
            Err(err) => return Ok(Some(End::Error(err))),
        }
    }
}

/// Drives `input` with two random splits and with the largest reads, and requires the same
/// frames and the same ending.
fn same_outcome_however_split(
    framing: Framing,
    max_frame: usize,
    input: &[u8],
    a: &Split,
    b: &Split,
) -> Result<Outcome, TestCaseError> {
    let whole = drive(framing, max_frame, input, &Split::Cuts(Vec::new()))?;
    for split in [a, b] {
        let outcome = drive(framing, max_frame, input, split)?;
        prop_assert_eq!(
            comparable(&outcome),
            comparable(&whole),
            "split {:?}: {:?}\nlargest reads: {:?}",
            split,
            outcome.end,
            whole.end
        );
    }
    Ok(whole)
}

/// What must not depend on read boundaries: the frames and how the stream ended. For HTTP,
/// that a request was refused, but not which status it got: a request breaking two limits
/// may be refused for the one reached first, which depends on how much has arrived (a long
/// chunk-size line is a 413 once the buffer passes the body limit, a 400 when seen whole).
fn comparable(outcome: &Outcome) -> (&[Vec<u8>], String) {
    let end = match &outcome.end {
        End::Error(FrameError::Http { .. }) => "refused".to_string(),
        end => format!("{end:?}"),
    };
    (&outcome.frames, end)
}

// ----- Shared strategies -----

/// Frame limits: mostly tiny (so limits are hit often), sometimes above a read's size.
fn max_frame() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1usize..=32,
        3 => 1usize..=512,
        1 => 1usize..=70_000,
    ]
}

/// Random bytes, or bytes from `alphabet` and [`TOKENS`] (where the decoders' decisions are).
fn noise(alphabet: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(select(alphabet).prop_map(|b| vec![b]), 0..256).prop_map(|v| v.concat()),
        vec(select(TOKENS).prop_map(<[u8]>::to_vec), 0..32).prop_map(|v| v.concat()),
    ]
}

/// A frame's bytes: `len` bytes repeating a short random pattern, cheap to make at any length.
#[derive(Debug, Clone)]
struct Payload {
    len: usize,
    pattern: Vec<u8>,
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        if self.pattern.is_empty() {
            return vec![b'x'; self.len];
        }
        self.pattern
            .iter()
            .copied()
            .cycle()
            .take(self.len)
            .collect()
    }
}

/// A payload whose length is anywhere up to `max`, or just around it.
fn payload(max: usize) -> impl Strategy<Value = Payload> {
    let len = prop_oneof![
        3 => 0..=max,
        1 => max.saturating_sub(1)..=max + 1,
    ];
    (len, vec(any::<u8>(), 0..8)).prop_map(|(len, pattern)| Payload { len, pattern })
}

// ----- lines -----

/// A line's content: no `\n` in it and no `\r` at its end (which the decoder strips).
fn line(payload: &Payload) -> Vec<u8> {
    let mut bytes = payload.bytes();
    for b in &mut bytes {
        if *b == b'\n' {
            *b = b'n';
        }
    }
    if bytes.last() == Some(&b'\r') {
        *bytes.last_mut().unwrap() = b'r';
    }
    bytes
}

/// Lines terminated by `\n` or `\r\n`, and whether the last one is left unterminated.
fn lines_case() -> impl Strategy<Value = (usize, Vec<(Payload, bool)>, bool)> {
    max_frame().prop_flat_map(|max| {
        (
            Just(max),
            vec((payload(max), any::<bool>()), 0..12),
            any::<bool>(),
        )
    })
}

// ----- length-prefixed -----

fn length_case() -> impl Strategy<Value = (usize, Vec<Payload>, Option<Index>)> {
    max_frame().prop_flat_map(|max| {
        (
            Just(max),
            vec(payload(max), 0..12),
            proptest::option::of(any::<Index>()),
        )
    })
}

// ----- http -----

/// One HTTP/1.1 (or 1.0) request as a client might send it.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
    /// Extra `X-F<n>: v` headers, to reach the 100-header limit.
    filler: usize,
    /// Length of an `X-Pad` header value, to reach the head-size limit.
    pad: usize,
    body: Body,
    connection: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    /// `Content-Length`, sent twice (with the same value) when `twice`.
    Length {
        data: Payload,
        twice: bool,
    },
    /// `Transfer-Encoding: chunked`: chunks with optional extensions, then trailers.
    Chunked {
        chunks: Vec<(Payload, Option<String>)>,
        trailers: Vec<(String, String)>,
    },
}

/// What the decoder must make of a request.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// The request as one frame; `close` if it asks to close the connection.
    Frame { close: bool },
    /// The request as one frame, or refused with 413 or 431: its data fits the limit but its
    /// chunked coding (sizes, extensions, trailers) does not, and the decoder counts that
    /// against the limit so a frame never exceeds the head limit plus `max_frame`.
    FrameOrRefused { close: bool },
    /// Refused with this status.
    Status(u16),
}

const MAX_HEADERS: usize = 100;

impl Request {
    /// The request's bytes, and what a decoder limited to `max_frame` must make of them.
    fn encode(&self, max_frame: usize) -> (Vec<u8>, Expect) {
        let mut head = format!(
            "{} {} HTTP/1.{}\r\nHost: pier.test\r\n",
            self.method,
            self.target,
            if self.http10 { 0 } else { 1 }
        );
        let mut headers = 1;
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
            headers += 1;
        }
        for i in 0..self.filler {
            head.push_str(&format!("X-F{i}: v\r\n"));
            headers += 1;
        }
        if self.pad > 0 {
            head.push_str(&format!("X-Pad: {}\r\n", "p".repeat(self.pad)));
            headers += 1;
        }
        let mut body = Vec::new();
        let mut data_len = 0;
        match &self.body {
            Body::None => {}
            Body::Length { data, twice } => {
                body = data.bytes();
                data_len = body.len();
                for _ in 0..=usize::from(*twice) {
                    head.push_str(&format!("Content-Length: {data_len}\r\n"));
                    headers += 1;
                }
            }
            Body::Chunked { chunks, trailers } => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                headers += 1;
                for (data, ext) in chunks {
                    let data = data.bytes();
                    data_len += data.len();
                    let size_line = format!("{:x}{}\r\n", data.len(), ext.as_deref().unwrap_or(""));
                    body.extend_from_slice(size_line.as_bytes());
                    body.extend_from_slice(&data);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    body.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
            }
        }
        // The decoder's rule: `close` closes; HTTP/1.0 closes unless it says `keep-alive`
        // (which means nothing to HTTP/1.1).
        let mut close = self.http10;
        if let Some(value) = self.connection {
            head.push_str(&format!("Connection: {value}\r\n"));
            headers += 1;
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && self.http10 {
                    close = false;
                }
            }
        }
        head.push_str("\r\n");
        let expect = if headers > MAX_HEADERS || head.len() > MAX_HEAD {
            Expect::Status(431)
        } else if data_len > max_frame {
            Expect::Status(413)
        } else if body.len() > max_frame && matches!(self.body, Body::Chunked { .. }) {
            Expect::FrameOrRefused { close }
        } else {
            Expect::Frame { close }
        };
        let mut wire = head.into_bytes();
        wire.extend_from_slice(&body);
        (wire, expect)
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
const CONNECTION: &[&str] = &[
    "close",
    "keep-alive",
    "Keep-Alive",
    "CLOSE",
    "upgrade",
    "keep-alive, close",
];

fn header(prefix: &'static str) -> impl Strategy<Value = (String, String)> {
    ("[A-Za-z0-9-]{1,10}", "[ -~]{0,24}")
        .prop_map(move |(name, value)| (format!("{prefix}{name}"), value))
}

fn request(max: usize) -> impl Strategy<Value = Request> {
    let chunk = (
        (1..=max, vec(any::<u8>(), 0..8)).prop_map(|(len, pattern)| Payload { len, pattern }),
        proptest::option::of("(;[a-z]{1,6}(=[a-z0-9]{1,6})?){1,2}"),
    );
    let body = prop_oneof![
        2 => Just(Body::None),
        3 => (payload(max), any::<bool>()).prop_map(|(data, twice)| Body::Length { data, twice }),
        3 => (vec(chunk, 0..6), vec(header("X-T"), 0..3))
            .prop_map(|(chunks, trailers)| Body::Chunked { chunks, trailers }),
    ];
    (
        select(METHODS),
        "/[a-zA-Z0-9/._~?=&%-]{0,24}",
        prop::bool::weighted(0.2),
        vec(header("X-"), 0..5),
        prop_oneof![30 => Just(0usize), 1 => 85usize..=105],
        prop_oneof![30 => Just(0usize), 1 => 65_300usize..=65_600],
        body,
        proptest::option::of(select(CONNECTION)),
    )
        .prop_map(
            |(method, target, http10, headers, filler, pad, body, connection)| Request {
                method,
                target,
                http10,
                headers,
                filler,
                pad,
                body,
                connection,
            },
        )
}

/// A body limit and one to four requests for it.
fn pipeline() -> impl Strategy<Value = (usize, Vec<Request>)> {
    max_frame().prop_flat_map(|max| (Just(max), vec(request(max), 1..5)))
}

fn encode_all(max: usize, requests: &[Request]) -> (Vec<u8>, Vec<(Vec<u8>, Expect)>) {
    let encoded: Vec<_> = requests.iter().map(|r| r.encode(max)).collect();
    let wire = encoded
        .iter()
        .flat_map(|(bytes, _)| bytes.clone())
        .collect();
    (wire, encoded)
}

const HTTP_ALPHABET: &[u8] = b"\r\n\t :;,/=0123456789abcdefABCDEF-GETPOSHTP.1ckuednLgrhsx";

fn http_status(end: &End) -> Option<u16> {
    match end {
        End::Error(FrameError::Http { status, .. }) => Some(*status),
        _ => None,
    }
}

// ----- The properties -----

proptest! {
    #![proptest_config(config())]

    /// Lines encoded with `\n` or `\r\n` come back whole; the first longer than the limit is
    /// `TooLarge`, and a last line without its terminator is still a line.
    #[test]
    fn lines_round_trip((max, lines, unterminated) in lines_case(), a in split()) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        let mut end = End::Eof;
        for (i, (payload, crlf)) in lines.iter().enumerate() {
            let mut content = line(payload);
            let last = i + 1 == lines.len();
            if end == End::Eof {
                if content.len() > max {
                    end = End::Error(FrameError::TooLarge { limit: max });
                } else if !(last && unterminated && !*crlf && content.is_empty()) {
                    expected.push(content.clone());
                }
            }
            if *crlf {
                content.push(b'\r');
            }
            Framing::Lines.encode(&content, &mut wire).unwrap();
            if last && unterminated {
                wire.truncate(wire.len() - 1);
            }
        }
        let outcome = drive(Framing::Lines, max, &wire, &a)?;
        prop_assert_eq!(outcome, Outcome { frames: expected, end });
    }

    /// Any bytes, and mutated encodings: bounded, split-independent, only `TooLarge`.
    #[test]
    fn lines_any_input(
        (max, input) in max_frame().prop_flat_map(|max| (Just(max), prop_oneof![
            noise(b"\r\nab"),
            (lines_case(), mutations()).prop_map(|((_, lines, _), m)| {
                let mut wire = BytesMut::new();
                for (payload, _) in &lines {
                    Framing::Lines.encode(&line(payload), &mut wire).unwrap();
                }
                let mut wire = wire.to_vec();
                mutate(&mut wire, &m);
                wire
            }),
        ])),
        a in split(),
        b in split(),
    ) {
        let outcome = same_outcome_however_split(Framing::Lines, max, &input, &a, &b)?;
        if let End::Error(err) = outcome.end {
            prop_assert_eq!(err, FrameError::TooLarge { limit: max });
        }
    }

    /// Length-prefixed frames come back whole; the first above the limit is refused from its
    /// header, and a stream cut inside a frame is `Truncated` with what had arrived of it.
    #[test]
    fn length_prefixed_round_trip((max, frames, cut) in length_case(), a in split()) {
        let mut wire = BytesMut::new();
        let frames: Vec<Vec<u8>> = frames.iter().map(Payload::bytes).collect();
        for frame in &frames {
            Framing::LengthPrefixed.encode(frame, &mut wire).unwrap();
        }
        let cut = cut.map_or(wire.len(), |at| at.index(wire.len() + 1));
        let mut expected = Vec::new();
        let mut end = End::Eof;
        let mut start = 0;
        for frame in &frames {
            let available = cut - start;
            if available == 0 {
                break;
            }
            if available >= 4 && frame.len() > max {
                end = End::Error(FrameError::TooLarge { limit: max });
                break;
            }
            if available < 4 + frame.len() {
                end = End::Error(FrameError::Truncated { buffered: available });
                break;
            }
            expected.push(frame.clone());
            start += 4 + frame.len();
        }
        let outcome = drive(Framing::LengthPrefixed, max, &wire[..cut], &a)?;
        prop_assert_eq!(outcome, Outcome { frames: expected, end });
    }

    /// Any bytes, and mutated encodings: bounded, split-independent, `TooLarge` or `Truncated`.
    #[test]
    fn length_prefixed_any_input(
        (max, input) in max_frame().prop_flat_map(|max| (Just(max), prop_oneof![
            noise(b"\0\x01\x02\x05\x10\xff"),
            (length_case(), mutations()).prop_map(|((_, frames, _), m)| {
                let mut wire = BytesMut::new();
                for frame in &frames {
                    Framing::LengthPrefixed.encode(&frame.bytes(), &mut wire).unwrap();
                }
                let mut wire = wire.to_vec();
                mutate(&mut wire, &m);
                wire
            }),
        ])),
        a in split(),
        b in split(),
    ) {
        let outcome = same_outcome_however_split(Framing::LengthPrefixed, max, &input, &a, &b)?;
        if let End::Error(err) = outcome.end {
            prop_assert!(
                matches!(err, FrameError::TooLarge { limit } if limit == max)
                    || matches!(err, FrameError::Truncated { .. }),
                "unexpected {:?}", err
            );
        }
    }

    /// Raw: each read is one frame, so any split gives back exactly its reads, in order, and
    /// frames encoded one per read come back as they were.
    #[test]
    fn raw_frames_are_the_reads(
        max in max_frame(),
        input in prop_oneof![
            noise(b"ab\n"),
            (0usize..70_000, vec(any::<u8>(), 0..8))
                .prop_map(|(len, pattern)| Payload { len, pattern }.bytes()),
        ],
        a in split(),
        b in split(),
    ) {
        for split in [&a, &b] {
            let reads = read_sizes(split, input.len(), Framing::Raw.decoder(max).read_hint());
            let outcome = drive(Framing::Raw, max, &input, split)?;
            let mut offset = 0;
            let expected: Vec<Vec<u8>> = reads
                .iter()
                .map(|n| {
                    offset += n;
                    input[offset - n..offset].to_vec()
                })
                .collect();
            prop_assert_eq!(outcome, Outcome { frames: expected, end: End::Eof });
        }
    }

    /// Raw frames (one to `read_hint` bytes, as a read is) encoded and read one per read.
    #[test]
    fn raw_round_trip(
        (max, frames) in max_frame().prop_flat_map(|max| {
            let hint = Framing::Raw.decoder(max).read_hint();
            (Just(max), vec((1..=hint, vec(any::<u8>(), 0..8))
                .prop_map(|(len, pattern)| Payload { len, pattern }), 0..8))
        }),
    ) {
        let frames: Vec<Vec<u8>> = frames.iter().map(Payload::bytes).collect();
        let mut wire = BytesMut::new();
        let mut cuts = Vec::new();
        for frame in &frames {
            Framing::Raw.encode(frame, &mut wire).unwrap();
            cuts.push(wire.len());
        }
        let mut decoder = Framing::Raw.decoder(max);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cuts {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(frame.to_vec());
            }
        }
        prop_assert_eq!(decoded, frames);
    }

    /// Pipelined requests come back one frame each, exactly as sent, up to the first that asks
    /// to close; over-limit ones are refused with the status the limits say.
    #[test]
    fn http_requests_round_trip((max, requests) in pipeline(), a in split()) {
        let (wire, encoded) = encode_all(max, &requests);
        let outcome = drive(Framing::Http, max, &wire, &a)?;
        let mut frames = outcome.frames.iter();
        for (bytes, expect) in &encoded {
            let close = match expect {
                Expect::Frame { close } => {
                    prop_assert_eq!(frames.next(), Some(bytes));
                    *close
                }
                Expect::FrameOrRefused { close } => match frames.next() {
                    Some(frame) => {
                        prop_assert_eq!(frame, bytes);
                        *close
                    }
                    None => {
                        let status = http_status(&outcome.end);
                        prop_assert!(matches!(status, Some(413 | 431)), "{:?}", outcome.end);
                        return Ok(());
                    }
                },
                Expect::Status(status) => {
                    prop_assert_eq!(frames.next(), None);
                    prop_assert_eq!(http_status(&outcome.end), Some(*status), "{:?}", outcome.end);
                    return Ok(());
                }
            };
            if close {
                prop_assert_eq!(frames.next(), None);
                prop_assert_eq!(outcome.end, End::Closed);
                return Ok(());
            }
        }
        prop_assert_eq!(frames.next(), None);
        prop_assert_eq!(outcome.end, End::Eof);
    }

    /// Any bytes, and mutated request pipelines: bounded, split-independent (frames, ending and
    /// status), and every refusal an HTTP error or a request cut short.
    #[test]
    fn http_any_input(
        (max, input) in max_frame().prop_flat_map(|max| (Just(max), prop_oneof![
            noise(HTTP_ALPHABET),
            (vec(request(max), 1..4), mutations()).prop_map(move |(requests, m)| {
                let mut wire = encode_all(max, &requests).0;
                mutate(&mut wire, &m);
                wire
            }),
        ])),
        a in split(),
        b in split(),
    ) {
        let outcome = same_outcome_however_split(Framing::Http, max, &input, &a, &b)?;
        if let End::Error(err) = &outcome.end {
            prop_assert!(
                matches!(err, FrameError::Http { status: 400 | 413 | 431, .. })
                    || matches!(err, FrameError::Truncated { .. }),
                "unexpected {:?}", err
            );
        }
    }
}

/// A chunked request whose coding, not its data, is large: what a client can make the host
/// buffer and scan without sending a byte of body data over the limit.
#[derive(Debug, Clone)]
enum Coding {
    /// One chunk whose size line carries an extension this long.
    LongExtension(usize),
    /// This many chunks of `size` bytes each.
    ManyChunks { count: usize, size: usize },
    /// A trailer field this long after the last chunk.
    LongTrailer(usize),
    /// A chunk size written with this many leading zeros.
    LeadingZeros(usize),
}

impl Coding {
    fn request(&self) -> Vec<u8> {
        let mut wire =
            b"POST /c HTTP/1.1\r\nHost: pier.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        match *self {
            Coding::LongExtension(len) => {
                wire.extend_from_slice(b"1;");
                wire.resize(wire.len() + len, b'e');
                wire.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
            }
            Coding::ManyChunks { count, size } => {
                let chunk = format!("{size:x}\r\n{}\r\n", "d".repeat(size));
                for _ in 0..count {
                    wire.extend_from_slice(chunk.as_bytes());
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            }
            Coding::LongTrailer(len) => {
                wire.extend_from_slice(b"0\r\nX-T: ");
                wire.resize(wire.len() + len, b't');
                wire.extend_from_slice(b"\r\n\r\n");
            }
            Coding::LeadingZeros(zeros) => {
                wire.resize(wire.len() + zeros, b'0');
                wire.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
            }
        }
        wire
    }
}

fn coding() -> impl Strategy<Value = Coding> {
    prop_oneof![
        (prop_oneof![1usize..=64, 4000usize..=4200, 60_000usize..=140_000])
            .prop_map(Coding::LongExtension),
        (1usize..=40_000, 1usize..=3).prop_map(|(count, size)| Coding::ManyChunks { count, size }),
        (prop_oneof![1usize..=64, 65_400usize..=65_600, 60_000usize..=140_000])
            .prop_map(Coding::LongTrailer),
        (prop_oneof![1usize..=64, 1usize..=10_000]).prop_map(Coding::LeadingZeros),
    ]
}

proptest! {
    // Cases here are up to 200 KB each, so a sixty-fourth of the count.
    #![proptest_config(config_scaled(64))]

    /// However large the chunked coding, frames stay within the head limit plus `max_frame`, the
    /// buffer within that plus a read, the request is a frame or a 4xx, the same however split,
    /// and a request after it is still read correctly.
    #[test]
    fn http_chunked_coding_is_bounded(
        max in prop_oneof![1usize..=64, 60_000usize..=70_000],
        coding in coding(),
        a in split(),
        b in split(),
    ) {
        let mut input = coding.request();
        let next = b"GET /next HTTP/1.1\r\nHost: pier.test\r\n\r\n";
        input.extend_from_slice(next);
        let outcome = same_outcome_however_split(Framing::Http, max, &input, &a, &b)?;
        match &outcome.end {
            End::Eof => {
                prop_assert_eq!(outcome.frames.len(), 2);
                prop_assert_eq!(&outcome.frames[1][..], &next[..]);
            }
            end => prop_assert!(
                matches!(http_status(end), Some(400 | 413 | 431)) && outcome.frames.is_empty(),
                "{:?} after {} frames", end, outcome.frames.len()
            ),
        }
    }
}
