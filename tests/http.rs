//! The built-in `http` plugin on the host-owned `http` framing, driven by curl, Python's
//! `http.client` and raw sockets: routes, keep-alive, pipelining, chunked bodies,
//! `Connection: close`, and the requests the host refuses itself (400, 413, 431).

mod common;

use common::{Client, Options, TestServer, builtin_wasm};
use pier::framing::Framing;
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
        match tokio::time::timeout(common::WAIT, client.stream.read(&mut byte))
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
        .write_raw(b"POST / HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n")
        .await;
    assert_eq!(response(&mut too_big).await.unwrap().0, 413);

    let mut bad_chunks = server.client().await;
    bad_chunks
        .write_raw(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
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
