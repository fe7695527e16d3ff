//! HTTP/1.1 request framing: finds where each request ends so a plugin gets exactly one whole
//! request per frame, and refuses bad ones itself.
//!
//! httparse parses the request head (check-then-parse: nothing is taken from the buffer until
//! the head is complete); the body is delimited by `Content-Length` or by `chunked`
//! transfer-coding, walked with `httparse::parse_chunk_size`. The frame is the request exactly
//! as received (head and body, chunked coding included), so the plugin sees what the client
//! sent. Limits: the head (request line + headers) is at most [`MAX_HEAD`] bytes and 100
//! headers (else 431); the body is at most the listener's `max_frame` (else 413); anything
//! unparsable, a conflicting `Content-Length`, or both `Content-Length` and chunked is a 400.

use bytes::{Bytes, BytesMut};

use super::FrameError;

/// Largest request head accepted; also the bound on a chunked request's trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers accepted.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line accepted (size, extensions, CRLF). Extensions are opaque to pier and
/// rarely used; a long line is only a way to make the host buffer and scan.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Below this many buffered bytes a head with no end yet is parsed on every read (so garbage is
/// refused at once); above it only when the buffer has doubled since the last attempt, so a head
/// trickling in costs linear, not quadratic, CPU.
const EAGER_PARSE: usize = 1024;

/// How the body of the request being read is delimited.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// Exactly this many bytes after the head.
    Length(usize),
    /// Chunked: `scanned` bytes (from the start of the request) are known-good chunks, holding
    /// `body` bytes of data.
    Chunked { scanned: usize, body: usize },
    /// Chunked, the last chunk seen: the trailer section starts at `start` and holds no empty
    /// line before `searched`.
    Trailers { start: usize, searched: usize },
}

/// The request currently being read, once its head is complete.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Length of the head, including the blank line.
    head: usize,
    /// How its body is delimited.
    body: Body,
    /// Whether the connection must close after this request's response.
    close: bool,
}

/// Cuts one connection's bytes into HTTP requests.
#[derive(Debug)]
pub struct HttpDecoder {
    /// Largest body accepted: the data of a `Content-Length` body, or everything a chunked body
    /// sends after the head (sizes, extensions, data, trailers).
    max_body: usize,
    /// The request whose head has been parsed but whose body is incomplete.
    pending: Option<Pending>,
    /// Bytes of an unfinished head already searched for its end (no empty line before here).
    head_searched: usize,
    /// Buffer length at which an unfinished head is parsed again (see [`EAGER_PARSE`]).
    next_parse: usize,
    /// Set when the last request returned asked for the connection to close.
    close_after: bool,
}

impl HttpDecoder {
    /// A decoder accepting bodies up to `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        HttpDecoder {
            max_body,
            pending: None,
            head_searched: 0,
            next_parse: 0,
            close_after: false,
        }
    }

    /// Whether the request last returned asked for the connection to close after its response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub fn close_requested(&self) -> bool {
        self.close_after
    }

    /// Makes the next `decode` parse an unfinished head at once instead of waiting for the
    /// buffer to double (the stream has ended).
    pub fn parse_now(&mut self) {
        self.next_parse = 0;
    }

    /// Takes the next complete request out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let pending = match self.pending {
            Some(p) => p,
            None => match self.parse_head(buf)? {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        self.pending = Some(pending);
        let total = match pending.body {
            Body::Length(len) => {
                let total = pending.head + len;
                if buf.len() < total {
                    return Ok(None);
                }
                total
            }
            Body::Chunked { .. } | Body::Trailers { .. } => match self.scan_chunks(buf)? {
                Some(total) => total,
                None => return Ok(None),
            },
        };
        self.pending = None;
        self.head_searched = 0;
        self.next_parse = 0;
        self.close_after = pending.close;
        Ok(Some(buf.split_to(total).freeze()))
    }

    fn parse_head(&mut self, buf: &BytesMut) -> Result<Option<Pending>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        // httparse starts from the beginning every time; only call it when the head can be
        // complete (an empty line arrived) or on the eager/doubling schedule.
        let ended = match find_head_end(buf, self.head_searched) {
            Some(_) => true,
            None => {
                // The last two bytes may start an empty line completed by the next read.
                self.head_searched = buf.len().saturating_sub(2);
                false
            }
        };
        if !ended {
            if buf.len() > MAX_HEAD {
                return Err(too_large_head());
            }
            if buf.len() < self.next_parse {
                return Ok(None);
            }
            self.next_parse = if buf.len() < EAGER_PARSE {
                0
            } else {
                buf.len() * 2
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(too_large_head()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(too_large_head()),
            Err(e) => return Err(bad_request(&format!("malformed request: {e}"))),
        };
        if head > MAX_HEAD {
            return Err(too_large_head());
        }
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut host = false;
        let http_1_0 = request.version == Some(0);
        let mut close = http_1_0;
        for header in request.headers.iter() {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| bad_request("header value is not valid text"))?
                .trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                // RFC 9112 §6.3: 1*DIGIT only — `+5`, `-0` or `5 5` are not lengths.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad_request("invalid Content-Length"));
                }
                let len: usize = value.parse().map_err(|_| too_large_body(self.max_body))?;
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(bad_request("conflicting Content-Length headers"));
                }
                content_length = Some(len);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(',').map(str::trim) {
                    if chunked {
                        // RFC 9112 §6.1: chunked is applied once and is the final coding.
                        return Err(bad_request("chunked is not the final transfer coding"));
                    }
                    if coding.eq_ignore_ascii_case("chunked") {
                        chunked = true;
                    } else if coding.is_empty() {
                        return Err(bad_request("empty transfer coding"));
                    }
                }
                if !chunked {
                    return Err(bad_request("unsupported Transfer-Encoding"));
                }
            } else if header.name.eq_ignore_ascii_case("host") {
                if host {
                    return Err(bad_request("more than one Host header"));
                }
                host = true;
            } else if header.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && http_1_0 {
                        close = false;
                    }
                }
            }
        }
        if !http_1_0 && !host {
            // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
            return Err(bad_request("HTTP/1.1 request without a Host header"));
        }
        let body = match (chunked, content_length) {
            (true, Some(_)) => {
                return Err(bad_request(
                    "both Content-Length and Transfer-Encoding: chunked",
                ));
            }
            (true, None) => Body::Chunked {
                scanned: head,
                body: 0,
            },
            (false, Some(len)) if len > self.max_body => return Err(too_large_body(self.max_body)),
            (false, len) => Body::Length(len.unwrap_or(0)),
        };
        Ok(Some(Pending { head, body, close }))
    }

    /// Walks chunks from where the last call stopped; returns the request's total length once
    /// the last chunk and the trailer section are in. Every byte is examined a bounded number of
    /// times: a chunk-size line at most [`MAX_CHUNK_LINE`] bytes is re-read per read until it
    /// ends, the trailer search resumes where it stopped.
    fn scan_chunks(&mut self, buf: &BytesMut) -> Result<Option<usize>, FrameError> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(None);
        };
        let head = pending.head;
        // Everything after the head counts against `max_body`, so a frame is never larger than
        // the head limit plus `max_frame` however the body is cut into chunks.
        let limit = head.saturating_add(self.max_body);
        let too_large = || too_large_body(self.max_body);
        loop {
            match pending.body {
                Body::Length(_) => return Ok(None),
                Body::Chunked { scanned, body } => {
                    let rest = &buf[scanned..];
                    let (line, size) = match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete(found)) => found,
                        Ok(httparse::Status::Partial) => {
                            if rest.len() > MAX_CHUNK_LINE {
                                return Err(long_chunk_line());
                            }
                            if buf.len() > limit {
                                return Err(too_large());
                            }
                            return Ok(None);
                        }
                        Err(_) => return Err(bad_request("malformed chunk size")),
                    };
                    if line > MAX_CHUNK_LINE {
                        return Err(long_chunk_line());
                    }
                    if size == 0 {
                        let start = scanned + line;
                        pending.body = Body::Trailers {
                            start,
                            searched: start,
                        };
                        continue;
                    }
                    let size = usize::try_from(size).map_err(|_| too_large())?;
                    if body.saturating_add(size) > self.max_body {
                        return Err(too_large());
                    }
                    let end = scanned + line + size;
                    if end.saturating_add(2) > limit {
                        return Err(too_large());
                    }
                    if rest.len() < line + size + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(bad_request("chunk data not followed by CRLF"));
                    }
                    pending.body = Body::Chunked {
                        scanned: end + 2,
                        body: body + size,
                    };
                }
                Body::Trailers { start, searched } => {
                    // The trailer section is header lines ending with an empty line; with no
                    // trailers it is just that CRLF.
                    // The body limit is checked the same way whether the end is already in
                    // the buffer or still arriving, so the outcome never depends on how the
                    // reads were cut.
                    if buf.len() >= start + 2 && &buf[start..start + 2] == b"\r\n" {
                        if start + 2 > limit {
                            return Err(too_large());
                        }
                        return Ok(Some(start + 2));
                    }
                    let from = searched.max(start);
                    if let Some(at) = find(&buf[from..], b"\r\n\r\n") {
                        let end = from + at + 4;
                        if end > limit {
                            return Err(too_large());
                        }
                        if end - start > MAX_HEAD {
                            return Err(too_large_trailers());
                        }
                        return Ok(Some(end));
                    }
                    if buf.len() > limit {
                        return Err(too_large());
                    }
                    if buf.len() - start > MAX_HEAD {
                        return Err(too_large_trailers());
                    }
                    // A terminator may straddle this read and the next.
                    pending.body = Body::Trailers {
                        start,
                        searched: buf.len().saturating_sub(3).max(start),
                    };
                    return Ok(None);
                }
            }
        }
    }
}

/// Where the empty line ending a request head is, searching from `from`: the index just past
/// it. httparse accepts bare `\n` line ends, so `\n\n` and `\n\r\n` both end a head.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(nl) = buf
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let i = at + nl;
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
            _ => at = i + 1,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn long_chunk_line() -> FrameError {
    bad_request(&format!(
        "chunk-size line longer than {MAX_CHUNK_LINE} bytes"
    ))
}

fn too_large_trailers() -> FrameError {
    FrameError::Http {
        status: 431,
        reason: format!("trailer section larger than {MAX_HEAD} bytes"),
    }
}

/// Whether a response the plugin wrote tells the client the connection ends after it: a
/// `Connection: close`, or an HTTP/1.0 response without `keep-alive`. The host must then close
/// it, or a client waiting for the close (ApacheBench with `-k` on HTTP/1.0) hangs. A reply the
/// host cannot parse as a response head decides nothing.
pub fn response_closes(reply: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if !matches!(response.parse(reply), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if !header.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        for token in header.value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                return true;
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    close
}

fn bad_request(reason: &str) -> FrameError {
    FrameError::Http {
        status: 400,
        reason: reason.to_string(),
    }
}

fn too_large_head() -> FrameError {
    FrameError::Http {
        status: 431,
        reason: format!(
            "request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers"
        ),
    }
}

fn too_large_body(max: usize) -> FrameError {
    FrameError::Http {
        status: 413,
        reason: format!("request body larger than {max} bytes"),
    }
}

/// The response pier sends for a request it refuses itself.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let title = match status {
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = format!("{status} {title}: {reason}\n");
    format!(
        "HTTP/1.1 {status} {title}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max_body: usize, input: &[u8]) -> (Vec<Bytes>, Option<FrameError>, HttpDecoder) {
        let mut dec = HttpDecoder::new(max_body);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None, dec),
                Err(e) => return (frames, Some(e), dec),
            }
        }
    }

    fn status(err: Option<FrameError>) -> u16 {
        match err {
            Some(FrameError::Http { status, .. }) => status,
            other => panic!("expected an HTTP error, got {other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_with_bodies_are_split_exactly() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\nHost: a\r\n\r\n";
        let (frames, err, dec) = decode_all(1024, input);
        assert!(err.is_none());
        assert_eq!(frames.len(), 3);
        assert!(frames[1].ends_with(b"\r\n\r\nhello"));
        assert!(!dec.close_requested());
    }

    #[test]
    fn chunked_bodies_end_at_the_last_chunk_even_when_split() {
        let request = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 1..request.len() {
            let mut dec = HttpDecoder::new(1024);
            let mut buf = BytesMut::from(&request[..split]);
            assert_eq!(dec.decode(&mut buf).unwrap(), None, "split at {split}");
            buf.extend_from_slice(&request[split..]);
            assert_eq!(dec.decode(&mut buf).unwrap().as_deref(), Some(&request[..]));
        }
    }

    #[test]
    fn limits_and_malformed_requests_map_to_status_codes() {
        let (_, err, _) = decode_all(
            4,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(status(err), 413);
        let (_, err, _) = decode_all(
            4,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(status(err), 413);
        let big = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 1)
        );
        let (_, err, _) = decode_all(4, big.as_bytes());
        assert_eq!(status(err), 431);
        let unfinished = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(MAX_HEAD + 1));
        let (_, err, _) = decode_all(4, unfinished.as_bytes());
        assert_eq!(
            status(err),
            431,
            "an endless head is refused before it completes"
        );
        let (_, err, _) = decode_all(4, b"\x00\x01garbage\r\n\r\n");
        assert_eq!(status(err), 400);
        let (_, err, _) = decode_all(
            4,
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(status(err), 400);
        let (_, err, _) = decode_all(
            64,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(status(err), 400);
    }

    #[test]
    fn the_end_of_a_chunked_body_counts_against_the_limit_however_it_arrives() {
        let request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in 1..=request.len() {
            let mut dec = HttpDecoder::new(1);
            let mut buf = BytesMut::from(&request[..split]);
            let mut outcome = dec.decode(&mut buf);
            if let Ok(None) = outcome {
                buf.extend_from_slice(&request[split..]);
                outcome = dec.decode(&mut buf);
            }
            match outcome {
                Err(FrameError::Http { status, .. }) => assert_eq!(status, 413, "split {split}"),
                other => panic!("split {split}: {other:?}"),
            }
        }
    }

    #[test]
    fn connection_close_and_http_1_0_ask_to_close() {
        let (_, _, dec) = decode_all(8, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(dec.close_requested());
        let (_, _, dec) = decode_all(8, b"GET / HTTP/1.0\r\n\r\n");
        assert!(dec.close_requested());
        let (_, _, dec) = decode_all(8, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!dec.close_requested());
    }
}
