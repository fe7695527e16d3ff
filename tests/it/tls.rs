//! TLS end to end with the real binary and real clients: `pier cert generate` certificates,
//! Python's `ssl` (with hostname checks against 127.0.0.1), `openssl s_client`, `pier send
//! --tls`, kn-sock's SSL client; mutual TLS refusals (no certificate, another CA, plaintext), a
//! silent client that must not delay others, a reset before the handshake, the client identity
//! reaching the plugin, and certificate reload on SIGHUP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::served;

use served::{Served, WAIT, pier};

fn tmp(name: &str) -> PathBuf {
    let dir = served::tmp().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn python(script: &str) -> Output {
    Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap()
}

/// A Python `ssl` client sending `message` once and printing the reply (or the error).
fn python_tls(port: u16, certs: &Path, client: Option<&Path>, message: &str) -> String {
    let client = client.map_or(String::new(), |dir| {
        format!(
            "ctx.load_cert_chain('{}', '{}')\n",
            dir.join("client.pem").display(),
            dir.join("client-key.pem").display()
        )
    });
    let script = format!(
        "import ssl, socket\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         {client}\
         try:\n\
         \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='127.0.0.1')\n\
         \x20   s.sendall(b'{message}')\n\
         \x20   data = s.recv(1024)\n\
         \x20   print('reply:' + data.decode() if data else 'closed')\n\
         except Exception as e:\n\
         \x20   print('error:', type(e).__name__, e)\n",
        ca = certs.join("ca.pem").display(),
    );
    let out = python(&script);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tls_with_generated_certificates_and_real_clients() {
    let (certs, printed) = served::certificates("tls-certs", &[]);
    for file in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        assert!(certs.join(file).exists(), "{file}");
        assert!(printed.contains(file), "{printed}");
    }
    assert!(
        printed.contains("pier serve --tls-cert") && printed.contains("pier send"),
        "{printed}"
    );

    let cert = certs.join("server.pem");
    let key = certs.join("server-key.pem");
    let served = Served::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(served.log_line("listening on").contains("TLS"));

    assert_eq!(
        python_tls(served.port(), &certs, None, "Hello TLS"),
        "reply:Echo: Hello TLS"
    );

    let out = pier()
        .args([
            "send",
            &served.addr,
            "via pier",
            "--tls",
            "--ca",
            certs.join("ca.pem").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: via pier\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &served.addr,
            "-CAfile",
            certs.join("ca.pem").to_str().unwrap(),
            "-verify_return_error",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = s_client.stdin.take().unwrap();
    stdin.write_all(b"from openssl").unwrap();
    let mut stdout = s_client.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !got.ends_with(b"from openssl") && Instant::now() < deadline {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(stdin);
    let _ = s_client.kill();
    let _ = s_client.wait();
    assert_eq!(String::from_utf8_lossy(&got), "Echo: from openssl");

    // Plaintext to a TLS port is refused with a reason in the log; the server carries on.
    // (A raw client reads rustls's alert record as its "reply"; it is never an echo.)
    let out = pier()
        .args(["send", &served.addr, "plain", "--timeout", "5s"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Echo"),
        "plaintext was served"
    );
    served.log_line("TLS handshake failed");
    assert_eq!(
        python_tls(served.port(), &certs, None, "still"),
        "reply:Echo: still"
    );
}

#[test]
fn mutual_tls_refuses_what_it_must_and_the_plugin_sees_the_client() {
    let (certs, _) = served::certificates("mtls-certs", &[]);
    let (other, _) = served::certificates("mtls-other-ca", &[]);
    let testkit = pier::builtin::guest_path("pier_testkit.wasm");
    let served = Served::start(&[
        testkit.to_str().unwrap(),
        "--framing",
        "lines",
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server-key.pem").to_str().unwrap(),
        "--client-ca",
        certs.join("ca.pem").to_str().unwrap(),
        "--handshake-timeout",
        "2s",
        "--alpn",
        "pier-test",
    ]);

    // A client that connects and says nothing holds only its own task.
    let silent = TcpStream::connect(&served.addr).unwrap();
    // A reset before the handshake is survived.
    {
        let reset = socket2::Socket::from(TcpStream::connect(&served.addr).unwrap());
        reset.set_linger(Some(Duration::ZERO)).unwrap();
    }

    let no_cert = python_tls(served.port(), &certs, None, "whoami\n");
    assert!(
        !no_cert.starts_with("reply:welcome"),
        "no client certificate must be refused: {no_cert}"
    );
    let wrong_ca = python_tls(served.port(), &certs, Some(&other), "whoami\n");
    assert!(
        !wrong_ca.starts_with("reply:welcome"),
        "a certificate from another CA must be refused: {wrong_ca}"
    );

    // Plaintext is refused too.
    let mut plain = TcpStream::connect(&served.addr).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain.write_all(b"whoami\n").unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("welcome"),
        "plaintext must be refused"
    );

    // The right certificate works, and the plugin sees who the client is — already in on-open.
    let script = format!(
        "import ssl, socket\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         ctx.load_cert_chain('{cert}', '{key}')\n\
         ctx.set_alpn_protocols(['pier-test', 'other'])\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='localhost')\n\
         f = s.makefile('rwb')\n\
         print(f.readline().decode().strip())\n\
         f.write(b'whoami\\n'); f.flush()\n\
         print(f.readline().decode().strip())\n",
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client-key.pem").display(),
        port = served.port()
    );
    let out = python(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let greeting = lines.next().unwrap_or_default();
    assert!(
        greeting.starts_with("welcome "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        greeting.contains("subject=") && greeting.contains("CN=pier test client"),
        "on-open: {greeting}"
    );
    assert!(
        greeting.contains("alpn=pier-test"),
        "negotiated ALPN reaches on-open: {greeting}"
    );
    assert!(
        greeting.contains("sni=localhost"),
        "SNI reaches on-open: {greeting}"
    );
    let whoami = lines.next().unwrap_or_default();
    assert!(
        whoami.contains("tls subject=") && whoami.contains("CN=pier test client"),
        "{whoami}"
    );
    assert!(whoami.contains("sans=client.pier.test"), "{whoami}");
    assert!(!whoami.ends_with("fingerprint="), "{whoami}");

    // The silent client is dropped at the handshake timeout, with a reason.
    served.log_line("TLS handshake timed out");
    drop(silent);
    served.log_line("TLS handshake failed");
}

#[test]
fn kn_sock_ssl_client_gets_the_echo() {
    let (certs, _) = served::certificates("knsock-tls-certs", &[]);
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("knsock-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        assert!(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap()
                .success()
        );
    }
    let has = Command::new(&python)
        .args(["-c", "import kn_sock"])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !has {
        let pip = |args: &[&str]| {
            Command::new(&python)
                .args(["-m", "pip", "install", "-q"])
                .args(args)
                .status()
                .unwrap()
                .success()
        };
        assert!(pip(&["--no-deps", "kn-sock==0.3.0"]) && pip(&["requests"]));
    }
    let served = Served::start(&[
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server-key.pem").to_str().unwrap(),
        "--client-ca",
        certs.join("ca.pem").to_str().unwrap(),
    ]);
    let script = format!(
        "import logging, sys\n\
         logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n\
         from kn_sock import send_ssl_tcp_message\n\
         send_ssl_tcp_message('127.0.0.1', {port}, 'Hello SSL', cafile='{ca}', certfile='{cert}', keyfile='{key}')\n",
        port = served.port(),
        ca = certs.join("ca.pem").display(),
        cert = certs.join("client.pem").display(),
        key = certs.join("client-key.pem").display(),
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Server response: Echo: Hello SSL"), "{log}");
}

#[test]
fn sighup_reloads_certificates_without_dropping_connections() {
    let (first, _) = served::certificates("reload-first", &[]);
    let (second, _) = served::certificates("reload-second", &[]);
    let live = tmp("reload-live");
    std::fs::create_dir_all(&live).unwrap();
    for f in ["server.pem", "server-key.pem"] {
        std::fs::copy(first.join(f), live.join(f)).unwrap();
    }
    let served = Served::start(&[
        "--tls-cert",
        live.join("server.pem").to_str().unwrap(),
        "--tls-key",
        live.join("server-key.pem").to_str().unwrap(),
    ]);
    // A connection open across the reloads.
    let script = format!(
        "import ssl, socket, sys\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=20), server_hostname='127.0.0.1')\n\
         s.sendall(b'before'); print(s.recv(1024).decode(), flush=True)\n\
         sys.stdin.readline()\n\
         s.sendall(b'after'); print(s.recv(1024).decode(), flush=True)\n",
        ca = first.join("ca.pem").display(),
        port = served.port()
    );
    let mut open = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut open_out = BufReader::new(open.stdout.take().unwrap());
    let mut line = String::new();
    open_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "Echo: before");

    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &served.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    // A broken new key is refused and the old certificate stays in use.
    std::fs::write(live.join("server-key.pem"), "not a key").unwrap();
    kill("-HUP");
    served.log_line("new TLS certificates refused");
    assert_eq!(
        python_tls(served.port(), &first, None, "old"),
        "reply:Echo: old"
    );

    // A good new pair is taken: new clients must now trust the second CA.
    for f in ["server.pem", "server-key.pem"] {
        std::fs::copy(second.join(f), live.join(f)).unwrap();
    }
    kill("-HUP");
    served.log_line("TLS certificates reloaded");
    assert_eq!(
        python_tls(served.port(), &second, None, "new"),
        "reply:Echo: new"
    );
    assert!(python_tls(served.port(), &first, None, "x").starts_with("error:"));

    // The connection opened before both reloads is still being served.
    open.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    open_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "Echo: after");
    let _ = open.wait();
}

#[test]
fn sni_chooses_the_certificate_by_server_name() {
    let (default, _) = served::certificates("sni-default", &[]);
    let (other, _) = served::certificates("sni-other", &["other.pier.test"]);
    let sni = format!(
        "other.pier.test,{},{}",
        other.join("server.pem").display(),
        other.join("server-key.pem").display()
    );
    let served = Served::start(&[
        "--tls-cert",
        default.join("server.pem").to_str().unwrap(),
        "--tls-key",
        default.join("server-key.pem").to_str().unwrap(),
        "--sni",
        &sni,
    ]);
    let ask = |ca: &Path, name: &str| {
        let script = format!(
            "import ssl, socket\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             try:\n\
             \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='{name}')\n\
             \x20   s.sendall(b'sni'); print(s.recv(1024).decode())\n\
             except Exception as e:\n\
             \x20   print('error:', type(e).__name__)\n",
            ca = ca.join("ca.pem").display(),
            port = served.port()
        );
        String::from_utf8_lossy(&python(&script).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        ask(&other, "other.pier.test"),
        "Echo: sni",
        "the SNI certificate is served"
    );
    assert_eq!(
        ask(&default, "localhost"),
        "Echo: sni",
        "others get the default certificate"
    );
    assert!(
        ask(&default, "other.pier.test").starts_with("error:"),
        "not the default for that name"
    );
}

#[test]
fn optional_client_certificates_and_client_side_options() {
    let (certs, _) = served::certificates("optional-certs", &[]);
    let (other, _) = served::certificates("optional-other", &[]);
    let testkit = pier::builtin::guest_path("pier_testkit.wasm");
    let served = Served::start(&[
        testkit.to_str().unwrap(),
        "--framing",
        "lines",
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server-key.pem").to_str().unwrap(),
        "--client-ca",
        certs.join("ca.pem").to_str().unwrap(),
        "--client-cert-optional",
    ]);
    let greet = |client: Option<&Path>| {
        let load = client.map_or(String::new(), |dir| {
            format!(
                "ctx.load_cert_chain('{}', '{}')\n",
                dir.join("client.pem").display(),
                dir.join("client-key.pem").display()
            )
        });
        let script = format!(
            "import ssl, socket\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             {load}\
             try:\n\
             \x20   s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='127.0.0.1')\n\
             \x20   print(s.makefile('rb').readline().decode().strip() or 'closed')\n\
             except Exception as e:\n\
             \x20   print('error:', type(e).__name__)\n",
            ca = certs.join("ca.pem").display(),
            port = served.port()
        );
        String::from_utf8_lossy(&python(&script).stdout)
            .trim()
            .to_string()
    };
    let anonymous = greet(None);
    assert!(
        anonymous.starts_with("welcome ") && anonymous.contains("subject= "),
        "let in without a certificate: {anonymous}"
    );
    let known = greet(Some(&certs));
    assert!(known.contains("CN=pier test client"), "{known}");
    let foreign = greet(Some(&other));
    assert!(
        !foreign.starts_with("welcome"),
        "a presented certificate is still verified: {foreign}"
    );

    // Client options of `pier send --tls`.
    let echo = Served::start(&[
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server-key.pem").to_str().unwrap(),
    ]);
    let send = |extra: &[&str]| {
        pier()
            .args(["send", &echo.addr, "opts", "--tls", "--timeout", "5s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = send(&["--insecure"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: opts\n",
        "--insecure skips verification"
    );
    let ca = certs.join("ca.pem");
    let out = send(&["--ca", ca.to_str().unwrap(), "--server-name", "localhost"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: opts\n");
    let out = send(&[
        "--ca",
        ca.to_str().unwrap(),
        "--server-name",
        "wrong.example",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS handshake") && err.trim().lines().count() == 1,
        "{err}"
    );
    let out = send(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ca"),
        "says what is missing"
    );
}

#[test]
fn a_config_routes_one_tls_port_to_two_tenants_by_server_name() {
    let (default, _) = served::certificates("sni-route-default", &[]);
    let (kit, _) = served::certificates("sni-route-kit", &["kit.pier.test"]);
    let testkit = pier::builtin::guest_path("pier_testkit.wasm");
    let config = default.join("pier.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listener]]
name = "front"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"

[listener.tls]
cert = "server.pem"
key = "server-key.pem"

[[listener.tls.sni]]
name = "kit.pier.test"
cert = "{kit}/server.pem"
key = "{kit}/server-key.pem"
plugin = "{testkit}"
"#,
            kit = kit.display(),
            testkit = testkit.display()
        ),
    )
    .unwrap();
    let served = Served::start(&["--config", config.to_str().unwrap()]);
    // Each client sends one line, then prints the first `lines` lines it gets back.
    let ask = |ca: &Path, name: &str, lines: usize| {
        let script = format!(
            "import ssl, socket\n\
             ctx = ssl.create_default_context(cafile='{ca}')\n\
             s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=10), server_hostname='{name}')\n\
             s.sendall(b'whoami\\n')\n\
             f = s.makefile('rb')\n\
             for _ in range({lines}): print(f.readline().decode().strip())\n",
            ca = ca.join("ca.pem").display(),
            port = served.port()
        );
        let out = python(&script);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // kit.pier.test reaches the test kit, a tenant of its own named after the route.
    let routed = ask(&kit, "kit.pier.test", 2);
    let mut lines = routed.lines();
    let greeting = lines.next().unwrap_or_default();
    assert!(
        greeting.starts_with("welcome ") && greeting.ends_with("sni=kit.pier.test"),
        "{routed}"
    );
    let whoami = lines.next().unwrap_or_default();
    assert!(whoami.contains(" front/kit.pier.test tls "), "{routed}");
    // Everyone else gets the listener's own plugin, echo (which does not greet).
    assert_eq!(ask(&default, "localhost", 1), "Echo: whoami");
}

/// `pier serve ARGS` must fail with exactly one line; returns it.
fn serve_error(args: &[&str]) -> String {
    let out = pier()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "pier serve {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    lines[0].to_string()
}

#[test]
fn tls_start_up_errors_say_what_is_wrong_in_one_line() {
    let (a, _) = served::certificates("startup-a", &[]);
    let (b, _) = served::certificates("startup-b", &[]);
    let (cert, key) = (a.join("server.pem"), b.join("server-key.pem"));
    // A key from another `pier cert generate` run.
    assert_eq!(
        serve_error(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap()
        ]),
        format!(
            "pier: the private key in {} does not match the certificate in {} (it belongs to \
             another certificate)",
            key.display(),
            cert.display()
        )
    );
    // The certificate given as the key.
    assert_eq!(
        serve_error(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            cert.to_str().unwrap()
        ]),
        format!(
            "pier: no private key in {} (it holds a certificate)",
            cert.display()
        )
    );
    // The client side says the same about its own pair.
    let plain = Served::start(&[]);
    let out = pier()
        .args(["send", &plain.addr, "x", "--tls", "--insecure", "--cert"])
        .arg(a.join("client.pem"))
        .arg("--key")
        .arg(b.join("client-key.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the certificate in"), "{err}");
}

#[test]
fn send_says_when_the_server_speaks_tls_or_does_not() {
    let (certs, _) = served::certificates("send-hints", &[]);
    let secure = Served::start(&[
        "--tls-cert",
        certs.join("server.pem").to_str().unwrap(),
        "--tls-key",
        certs.join("server-key.pem").to_str().unwrap(),
    ]);
    // Plaintext to a TLS port: the server's alert is recognised, not printed as the reply.
    let out = pier()
        .args(["send", &secure.addr, "Hello TCP"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "pier: the server at {} speaks TLS; add --tls (with --ca CA.pem or --insecure)",
            secure.addr
        )
    );

    // TLS to a plaintext port: its reply is not a TLS record.
    let plain = Served::start(&[]);
    let out = pier()
        .args(["send", &plain.addr, "hi", "--tls", "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "pier: the server at {} does not speak TLS (its reply is not a TLS record); drop --tls",
            plain.addr
        )
    );
}
