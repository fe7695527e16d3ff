//! The built-in `http` plugin on the host-owned `http` framing, driven by curl, Python's
//! `http.client` and raw sockets: routes, keep-alive, pipelining, chunked bodies,
//! `Connection: close`, and the requests the host refuses itself (400, 413, 431).

use crate::support;

use pier::Framing;
use support::{Client, Options, TestServer, builtin_wasm};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

async fn server() -> TestServer {
    TestServer::start(
        &builtin_wasm("http"),
        Options {
            framing: Framing::Http,
            max_frame: 64 * 1024,
            ..Options::default()
        },
    )
    .await
}

/// Reads one HTTP response (head + Content-Length body) from a raw client.
async fn response(client: &mut Client) -> Option<(u16, String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(support::WAIT, client.stream.read(&mut byte))
            .await
            .ok()?
        {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    client.stream.read_exact(&mut body).await.unwrap();
    Some((status, head, String::from_utf8(body).unwrap()))
}

async fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn curl_gets_each_route() {
    let server = server().await;
    let base = format!("http://{}", server.addr);
    assert!(
        curl(&[&format!("{base}/")])
            .await
            .contains("<h1>Hello from pier!</h1>")
    );
    let time: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{base}/time")]).await).unwrap();
    assert!(time["timestamp"].as_u64().unwrap() > 1_700_000_000);
    assert!(time["time"].as_str().unwrap().ends_with('Z'));
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{base}/stats")]).await).unwrap();
    assert!(stats["connected_clients"].as_u64().unwrap() >= 1);
    assert!(stats["total_messages"].as_u64().unwrap() >= 3);
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/nowhere"),
    ])
    .await;
    assert_eq!(code, "404");
    // Several URLs in one curl invocation reuse one keep-alive connection.
    let verbose = Command::new("curl")
        .args([
            "-s",
            "-v",
            "--max-time",
            "10",
            &format!("{base}/time"),
            &format!("{base}/time"),
        ])
        .output()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&verbose.stderr);
    assert!(
        log.contains("Re-using existing connection") || log.contains("Reusing existing"),
        "{log}"
    );
    server.stop().await;
}

#[tokio::test]
async fn python_http_client_keeps_the_connection_alive() {
    let server = server().await;
    let script = format!(
        "import http.client, json\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         ports = set()\n\
         for path in ['/', '/time', '/stats', '/missing']:\n\
         \x20   c.request('GET', path)\n\
         \x20   r = c.getresponse(); body = r.read()\n\
         \x20   ports.add(c.sock.getsockname()[1])\n\
         \x20   print(path, r.status, len(body))\n\
         c.request('POST', '/missing', body=iter([b'chunk one ', b'chunk two']), encode_chunked=True,\n\
         \x20         headers={{'Transfer-Encoding': 'chunked'}})\n\
         r = c.getresponse(); r.read(); print('chunked', r.status)\n\
         ports.add(c.sock.getsockname()[1])\n\
         print('connections', len(ports))\n",
        port = server.addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/ 200"), "{text}");
    assert!(
        text.contains("/time 200") && text.contains("/stats 200"),
        "{text}"
    );
    assert!(text.contains("/missing 404"), "{text}");
    assert!(text.contains("chunked 404"), "{text}");
    assert!(
        text.contains("connections 1"),
        "all on one keep-alive connection: {text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_connection_close_is_honoured() {
    let server = server().await;
    let mut client = server.client().await;
    client
        .write_raw(
            b"GET /time HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
              POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
    let statuses: Vec<u16> = [
        response(&mut client).await.unwrap().0,
        response(&mut client).await.unwrap().0,
        response(&mut client).await.unwrap().0,
    ]
    .to_vec();
    assert_eq!(statuses, vec![200, 404, 200]);
    let (status, head, body) = response(&mut client).await.unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"), "{head}");
    assert!(body.contains("Hello from pier!"));
    assert!(
        response(&mut client).await.is_none(),
        "closed after the Connection: close request"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_by_the_host_with_the_right_status() {
    let server = server().await;

    let mut huge_header = server.client().await;
    let mut request = b"GET / HTTP/1.1\r\nX-Huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 200 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    // The server may close while we are still writing; that is fine.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut huge_header.stream, &request).await;
    let (status, _, _) = response(&mut huge_header).await.expect("a 431 response");
    assert_eq!(status, 431);
    assert!(huge_header.closed_by_server().await);

    let mut garbage = server.client().await;
    garbage
        .write_raw(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .await;
    assert_eq!(response(&mut garbage).await.unwrap().0, 400);
    assert!(garbage.closed_by_server().await);

    let mut too_big = server.client().await;
    too_big
        .write_raw(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        .await;
    assert_eq!(response(&mut too_big).await.unwrap().0, 413);

    let mut bad_chunks = server.client().await;
    bad_chunks
        .write_raw(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    assert_eq!(response(&mut bad_chunks).await.unwrap().0, 400);

    // Everyone else is unaffected.
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/", server.addr),
    ])
    .await;
    assert_eq!(out, "200");
    server.stop().await;
}

/// Sends `request` on a fresh connection and returns the status the host answered with.
async fn status_of(server: &TestServer, request: &[u8]) -> u16 {
    let mut client = server.client().await;
    // The server may answer and close while a long request is still being written.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut client.stream, request).await;
    let (status, _, _) = response(&mut client).await.expect("a response");
    status
}

#[tokio::test]
async fn leniencies_rfc_9112_forbids_are_refused() {
    let server = server().await;
    for (request, why) in [
        (
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"[..],
            "a signed Content-Length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "chunked applied twice",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "chunked in two headers",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 without Host"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "two Host headers",
        ),
    ] {
        assert_eq!(status_of(&server, request).await, 400, "{why}");
    }
    // HTTP/1.0 needs no Host.
    assert_eq!(status_of(&server, b"GET / HTTP/1.0\r\n\r\n").await, 200);
    server.stop().await;
}

#[tokio::test]
async fn chunked_bodies_are_bounded_line_by_line_and_in_total() {
    // max_frame is 64 KiB here.
    let server = server().await;
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";

    // A chunk extension of 200 KB on one size line: refused at the line limit, not delivered.
    let mut long_line = head.to_vec();
    long_line.extend_from_slice(b"5;ext=");
    long_line.extend(std::iter::repeat_n(b'x', 200 * 1024));
    long_line.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(status_of(&server, &long_line).await, 400);

    // The same, never terminated: refused once past the line limit, without waiting for more.
    let mut endless = server.client().await;
    let mut partial = head.to_vec();
    partial.extend_from_slice(b"5;");
    partial.extend(std::iter::repeat_n(b'x', 256 * 1024));
    let _ = tokio::io::AsyncWriteExt::write_all(&mut endless.stream, &partial).await;
    assert_eq!(response(&mut endless).await.expect("a response").0, 400);
    assert!(endless.closed_by_server().await);

    // 40,000 one-byte chunks: 40 KB of data, within max_frame, but 240 KB on the wire. The
    // framing counts against the limit too, so a frame never exceeds head + max_frame.
    let mut tiny_chunks = head.to_vec();
    for _ in 0..40_000 {
        tiny_chunks.extend_from_slice(b"1\r\na\r\n");
    }
    tiny_chunks.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&server, &tiny_chunks).await, 413);

    // An endless trailer section: everything after the head counts against max_frame (64 KiB
    // here, below the 64 KiB trailer limit plus the chunk line), so it is refused as too large.
    let mut trailers = head.to_vec();
    trailers.extend_from_slice(b"0\r\nX-T: ");
    trailers.extend(std::iter::repeat_n(b'y', 100 * 1024));
    assert_eq!(status_of(&server, &trailers).await, 413);

    // An ordinary chunked request with a trailer still works.
    let ok = b"POST /time HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
    assert_eq!(status_of(&server, ok).await, 200);
    server.stop().await;
}

#[tokio::test]
async fn http_1_0_keep_alive_is_honoured_and_a_closing_response_closes() {
    let server = server().await;
    // HTTP/1.0 with keep-alive: the answer says keep-alive and the connection serves a second
    // request.
    let mut client = server.client().await;
    client
        .write_raw(b"GET /time HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .await;
    let (status, head, _) = response(&mut client).await.expect("first response");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("connection: keep-alive"),
        "{head}"
    );
    client
        .write_raw(b"GET /time HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .await;
    assert_eq!(response(&mut client).await.expect("second response").0, 200);

    // HTTP/1.0 without keep-alive: the response says close and the host closes after it.
    let mut plain = server.client().await;
    plain.write_raw(b"GET / HTTP/1.0\r\n\r\n").await;
    let (_, head, _) = response(&mut plain).await.expect("response");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(plain.closed_by_server().await);
    server.stop().await;
}

/// Runs a load tool to completion under a time bound; its stdout.
async fn run_tool(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish: it is waiting on a connection"))
        .unwrap_or_else(|e| panic!("{program} is installed (.ci/run installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn apache_bench_keep_alive_and_wrk_complete() {
    let server = server().await;
    let url = format!("http://{}/time", server.addr);
    // ab -k speaks HTTP/1.0 with `Connection: Keep-Alive`; it hung when the host kept a
    // connection the response had said was closing.
    let ab = run_tool("ab", &["-k", "-n", "2000", "-c", "4", "-s", "20", &url]).await;
    let field = |name: &str| {
        ab.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("`{name}` in ab's output:\n{ab}"))
    };
    assert_eq!(field("Complete requests:"), "2000", "{ab}");
    assert_eq!(field("Failed requests:"), "0", "{ab}");
    assert_eq!(
        field("Keep-Alive requests:"),
        "2000",
        "every request reused a connection:\n{ab}"
    );
    // ab without -k: HTTP/1.0, a connection per request, closed by the host after each.
    let ab = run_tool("ab", &["-n", "200", "-c", "4", "-s", "20", &url]).await;
    assert!(ab.contains("Complete requests:      200"), "{ab}");

    let wrk = run_tool("wrk", &["-t1", "-c4", "-d1s", "--timeout", "10s", &url]).await;
    assert!(!wrk.contains("Socket errors"), "{wrk}");
    assert!(!wrk.contains("Non-2xx"), "{wrk}");
    assert!(wrk.contains("requests in"), "{wrk}");
    server.stop().await;
}
