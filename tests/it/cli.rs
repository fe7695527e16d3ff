//! The `pier` binary end to end: `serve` on port 0 with the address read from stderr, `send`,
//! `check`, start-up errors, SIGTERM draining, and real third-party clients (a plain Python
//! socket and kn-sock from PyPI).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::ports;
use crate::support::served;

use served::{Served, WAIT, http_get, pier, tmp};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run pier")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_with_no_plugin_runs_the_embedded_echo_and_pier_send_gets_the_reply() {
    let served = Served::start(&["--listen", "127.0.0.1:0"]);
    let out = run(pier().args(["send", &served.addr, "Hello TCP"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: Hello TCP\n");

    let out = run(pier().args(["send", &served.addr, "--hex", "00ff10"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}00ff10\n", hex(b"Echo: "))
    );

    let mut child = pier()
        .args(["send", &served.addr, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: from stdin\n");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn serve_with_lines_and_length_prefixed_framing_by_flag() {
    for framing in ["lines", "length-prefixed"] {
        let served = Served::start(&["echo", "--listen", "127.0.0.1:0", "--framing", framing]);
        let out = run(pier().args(["send", &served.addr, "framed", "--framing", framing]));
        assert!(out.status.success(), "{framing}: {}", stderr_of(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: framed\n");
    }
}

#[test]
fn a_plain_python_client_sending_once_and_reading_once_gets_the_echo() {
    let served = Served::start(&["--listen", "127.0.0.1:0"]);
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n\
         s.sendall(b'Hello from Python')\n\
         print(s.recv(1024).decode())\n",
        port = served.port()
    );
    let out = run(Command::new("python3").args(["-c", &script]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: Hello from Python\n"
    );
}

/// A virtualenv with kn-sock 0.3.0 from PyPI. The library needs only `--no-deps kn-sock` plus
/// `requests`; its CLI needs the full install, whose pyaudio dependency builds only where
/// Debian's portaudio19-dev is installed (`.ci/run` installs it). Returns whether the CLI works.
fn kn_sock_venv() -> (PathBuf, bool) {
    let venv = tmp().join("knsock-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(ok.success(), "python3 -m venv failed");
    }
    let pip = |args: &[&str]| {
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(args)
            .status()
            .unwrap()
            .success()
    };
    let has_lib = Command::new(&python)
        .args(["-c", "import kn_sock"])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !has_lib {
        assert!(
            pip(&["--no-deps", "kn-sock==0.3.0"]),
            "pip install kn-sock failed"
        );
        assert!(pip(&["requests"]), "pip install requests failed");
    }
    let cli = venv.join("bin/kn-sock");
    let cli_works = |cli: &Path| {
        Command::new(cli)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if cli_works(&cli) {
        return (venv, true);
    }
    let full = pip(&["kn-sock==0.3.0"]);
    if std::env::var_os("CI").is_some() {
        assert!(
            full,
            "CI must be able to install kn-sock's CLI (needs portaudio19-dev)"
        );
    }
    (venv.clone(), full && cli_works(&cli))
}

#[test]
fn kn_sock_clients_get_the_echo() {
    let (venv, cli) = kn_sock_venv();
    let served = Served::start(&["--listen", "127.0.0.1:0"]);
    let script = format!(
        "import logging, sys\n\
         logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n\
         from kn_sock import send_tcp_message\n\
         send_tcp_message('127.0.0.1', {port}, 'Hello TCP')\n",
        port = served.port()
    );
    let out = run(Command::new(venv.join("bin/python")).args(["-c", &script]));
    let log = stderr_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("[TCP] Server response: Echo: Hello TCP"),
        "{log}"
    );

    if cli {
        let out = run(Command::new(venv.join("bin/kn-sock")).args([
            "send-tcp",
            "127.0.0.1",
            &served.port().to_string(),
            "Hello TCP",
        ]));
        let log = format!(
            "{}{}",
            stderr_of(&out),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(log.contains("Echo: Hello TCP"), "{log}");
    } else {
        eprintln!(
            "kn-sock's CLI is not installable here (no portaudio19-dev); tested its library only"
        );
    }
}

#[test]
fn send_failures_are_one_line_and_non_zero() {
    // Nothing listens on a port we just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(pier().args(["send", &format!("127.0.0.1:{port}"), "x"]));
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = run(pier().args(["send", &addr, "x", "--timeout", "300ms"]));
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("no reply from") && err.contains("300ms"),
        "{err}"
    );
    // The usual cause is a framing the server does not use: the line says how to pick another.
    assert!(
        err.contains("--framing (lines, length-prefixed, http, websocket)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    drop(silent);
}

/// Runs `pier serve ARGS`, which must fail, and returns its one line of output: nothing else
/// may be printed (no drain or shutdown lines for a server that never started).
fn serve_error(args: &[&str]) -> String {
    let out = run(pier().arg("serve").args(args));
    assert!(!out.status.success(), "pier serve {args:?} should fail");
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("pier: "), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    lines[0].to_string()
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_eq!(
        serve_error(&["--listen", &addr]),
        format!("pier: address {addr} is already in use")
    );
    assert_eq!(
        serve_error(&["--listen", &addr, "--reuse-port"]),
        format!(
            "pier: address {addr} is already in use by a socket without reuse_port (every process on it must set it)"
        )
    );

    let line = serve_error(&["/nonexistent/handler.wasm"]);
    assert!(
        line.contains("plugin file /nonexistent/handler.wasm does not exist"),
        "{line}"
    );

    let line = serve_error(&["nosuchplugin"]);
    assert!(
        line.contains("no plugin file or built-in plugin named `nosuchplugin`"),
        "{line}"
    );

    let dir = tmp().join("bad-plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text.wasm");
    std::fs::write(&text, "hello, not wasm").unwrap();
    let line = serve_error(&[text.to_str().unwrap()]);
    assert!(line.contains("not a WebAssembly file"), "{line}");

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let line = serve_error(&[core.to_str().unwrap()]);
    assert!(
        line.contains("core WebAssembly module, not a component"),
        "{line}"
    );

    // A valid but empty component: no exports at all.
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let line = serve_error(&[empty.to_str().unwrap()]);
    assert!(
        line.contains("does not export `pier:plugin/handler@0.1.0`"),
        "{line}"
    );

    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0\xff\xff\xff").unwrap();
    let line = serve_error(&[garbage.to_str().unwrap()]);
    assert!(line.contains("not a valid WebAssembly component"), "{line}");

    // The admin address is bound before any listener: taken, it is the only line too.
    let line = serve_error(&["--listen", "127.0.0.1:0", "--admin", &addr]);
    assert_eq!(
        line,
        format!("pier: admin endpoint: address {addr} is already in use")
    );

    // In a config, a later listener's address in use stops start-up before any listener
    // serves: no `listening on` line for the first one.
    let config = dir.join("two.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"first\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\n\
             [[listener]]\nname = \"second\"\naddress = \"{addr}\"\nplugin = \"echo\"\n"
        ),
    )
    .unwrap();
    let line = serve_error(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        line,
        format!("pier: listener `second`: address {addr} is already in use")
    );

    // A bare number where a duration belongs: the example says what to write.
    let config = dir.join("bare-number.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\n\
         [listener.limits]\ncall_deadline = 500\n",
    )
    .unwrap();
    let out = run(pier().args(["serve", "--config", config.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("expected a duration such as \"500ms\""),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn serve_help_lists_every_built_in_plugin_and_its_framing() {
    let out = run(pier().args(["serve", "--help"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for builtin in pier::builtin::BUILTINS {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{} ", builtin.name))),
            "`{}` is not listed:\n{help}",
            builtin.name
        );
        // clap wraps long help lines, so compare with the whitespace collapsed.
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&format!("{} {}", builtin.name, builtin.framing)),
            "`{}`'s framing is not listed:\n{help}",
            builtin.name
        );
    }
}

#[test]
fn check_fills_and_then_reads_the_compile_cache_serve_uses() {
    let cache = tmp().join("check-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let check = |extra: &[&str]| {
        let out = run(pier()
            .args(["check", "chat", "--cache-dir", cache.to_str().unwrap()])
            .args(extra));
        assert!(out.status.success(), "{}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        check(&[]).contains(", compiled in "),
        "first check compiles"
    );
    assert!(
        check(&[]).contains(", loaded from the compile cache in "),
        "second check reads what the first wrote"
    );
    assert!(
        check(&["--no-cache"]).contains(", compiled in "),
        "--no-cache compiles"
    );
}

#[test]
fn check_reports_fit_imports_and_exports() {
    let out = run(pier().args(["check", "echo"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fits pier:plugin/plugin@0.1.0"), "{text}");
    assert!(text.contains("pier:plugin/handler@0.1.0"), "{text}");

    let faulty = pier::builtin::guest_path("pier_faulty.wasm");
    let out = run(pier().args(["check", faulty.to_str().unwrap()]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pier:plugin/log@0.1.0  (provided by pier)"),
        "{text}"
    );

    let dir = tmp().join("bad-plugins-check");
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let out = run(pier().args(["check", empty.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("does not export"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn faults_are_logged_with_plugin_and_connection_and_the_server_keeps_serving() {
    let faulty = pier::builtin::guest_path("pier_faulty.wasm");
    let served = Served::start(&[
        faulty.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--call-deadline",
        "200ms",
    ]);
    let out = run(pier().args(["send", &served.addr, "loop"]));
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("closed the connection without replying"));
    let out = run(pier().args(["send", &served.addr, "ok"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Echo: ok\n");
    served::eventually("the deadline fault in the log", || {
        served.log().contains("fault=\"deadline\"")
    });
    let log = served.log();
    let line = log
        .lines()
        .find(|l| l.contains("plugin fault"))
        .unwrap_or_else(|| panic!("no fault line in:\n{log}"));
    assert!(
        line.contains("pier_faulty.wasm@") && line.contains("conn="),
        "{line}"
    );
    assert!(line.contains("fault=\"deadline\""), "{line}");
    // The guest's own log call appears tagged with the plugin.
    assert!(log.contains("entering an endless loop"), "{log}");
}

#[test]
fn sigterm_drains_every_owed_reply_then_exits_cleanly() {
    let mut served = Served::start(&[
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "lines",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = served.admin_addr();
    let frames_per_client = 20_000;
    let mut clients = Vec::new();
    for c in 0..4 {
        let mut stream = TcpStream::connect(&served.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut wire = Vec::new();
        for i in 0..frames_per_client {
            wire.extend_from_slice(format!("client {c} frame {i:06}\n").as_bytes());
        }
        // Written but not read: replies pile up in the server's write path.
        stream.write_all(&wire).unwrap();
        clients.push(stream);
    }
    // SIGTERM once the server has read every frame (each reply is then owed; a frame still in
    // the kernel's buffer at close would turn the close into a reset).
    served::eventually("every frame of the four clients read by the server", || {
        let list = served::admin_connections(&admin);
        let all = Some(frames_per_client as u64);
        list.len() == 4 && list.iter().all(|c| c["frames_in"].as_u64() == all)
    });
    served.signal("TERM");
    for (c, stream) in clients.iter_mut().enumerate() {
        let mut replies = String::new();
        stream
            .read_to_string(&mut replies)
            .expect("replies, then EOF");
        let lines: Vec<&str> = replies.lines().collect();
        assert_eq!(
            lines.len(),
            frames_per_client,
            "client {c} got every owed reply"
        );
        assert_eq!(lines[0], format!("Echo: client {c} frame 000000"));
        assert_eq!(
            lines[frames_per_client - 1],
            format!("Echo: client {c} frame {:06}", frames_per_client - 1)
        );
    }
    let status = served.wait_exit();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        served.log()
    );
    assert!(served.log().contains("SIGTERM received"));
    // New connections are refused once it is gone.
    assert!(TcpStream::connect(&served.addr).is_err());
}

#[test]
fn on_close_gets_the_shutdown_reason_and_guest_logs_are_tagged_with_the_plugin() {
    let testkit = pier::builtin::guest_path("pier_testkit.wasm");
    let mut served = Served::start(&[
        testkit.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "lines",
    ]);
    let stream = TcpStream::connect(&served.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let id = greeting
        .trim()
        .strip_prefix("welcome ")
        .expect("greeting")
        .to_string();

    served.signal("TERM");
    assert!(served.wait_exit().success());
    let log = served.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("left {id} shutdown")))
        .unwrap_or_else(|| panic!("on-close(shutdown) was not logged:\n{log}"));
    assert!(
        line.contains("pier_testkit.wasm@") && line.contains(&format!("conn={id}")),
        "{line}"
    );
}

#[test]
fn guest_stdout_and_stderr_go_to_the_log_tagged_with_the_plugin_and_connection() {
    let faulty = pier::builtin::guest_path("pier_faulty.wasm");
    let mut served = Served::start(&[faulty.to_str().unwrap(), "--framing", "lines"]);
    let mut stream = TcpStream::connect(&served.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"print hello from the guest\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert_eq!(reply, "printed\n");
    // A panic writes its message to stderr, then traps.
    stream.write_all(b"panic\n").unwrap();
    let mut rest = String::new();
    let _ = reader.read_line(&mut rest);
    served.signal("TERM");
    assert!(served.wait_exit().success());
    let log = served.log();
    let find = |text: &str| {
        log.lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("`{text}` not logged:\n{log}"))
            .to_string()
    };
    let out = find("hello from the guest");
    assert!(
        out.contains("pier_faulty.wasm@")
            && out.contains("stream=\"stdout\"")
            && out.contains("conn="),
        "{out}"
    );
    let err = find("asked to panic");
    assert!(
        err.contains("WARN") && err.contains("stream=\"stderr\""),
        "{err}"
    );
}

#[test]
fn json_log_lines_parse_and_carry_the_listener_plugin_and_connection() {
    let faulty = pier::builtin::guest_path("pier_faulty.wasm");
    // `--log-format` is global, so it may follow `serve`.
    let mut served = Served::start(&[
        "--log-format",
        "json",
        faulty.to_str().unwrap(),
        "--framing",
        "lines",
    ]);
    let mut stream = TcpStream::connect(&served.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"trap\n").unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    served.signal("TERM");
    assert!(served.wait_exit().success());
    let log = served.log();
    let fault = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each JSON line parses"))
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("plugin fault"))
        })
        .unwrap_or_else(|| panic!("no JSON fault line:\n{log}"));
    assert_eq!(fault["level"], "ERROR");
    let span = &fault["span"];
    assert_eq!(span["name"], "conn", "{fault}");
    assert_eq!(span["listener"], "default", "{fault}");
    assert!(span["conn"].as_u64().is_some_and(|id| id > 0), "{fault}");
    assert!(
        span["plugin"]
            .as_str()
            .is_some_and(|p| p.contains("pier_faulty.wasm@")),
        "{fault}"
    );
}

#[test]
fn built_in_plugins_bring_their_own_framing() {
    for (plugin, framing) in [
        ("chat", "lines"),
        ("http", "http"),
        ("stats", "lines"),
        ("lpjson", "length-prefixed"),
        ("echo", "raw"),
    ] {
        let served = Served::start(&[plugin, "--listen", "127.0.0.1:0"]);
        let line = served.log();
        assert!(
            line.contains(&format!("(plugin {plugin}, framing {framing})")),
            "{plugin}: {line}"
        );
    }
    // The default framing can be overridden.
    let served = Served::start(&["stats", "--listen", "127.0.0.1:0", "--framing", "raw"]);
    let out = run(pier().args(["send", &served.addr, "x"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"connected_clients\":1"));
}

#[test]
fn interactive_send_speaks_the_json_protocols_commands_and_plain_lines() {
    let served = Served::start(&["lpjson", "--listen", "127.0.0.1:0"]);
    let mut child = pier()
        .args(["send", "-i", &served.addr, "--framing", "length-prefixed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"/ping\n/echo hi there\n/stats\n{\"type\": \"nope\"}\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON frame per line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pong", "echo_response", "server_stats", "error"]);
    assert_eq!(lines[1]["content"], "hi there");

    let chat = Served::start(&["chat", "--listen", "127.0.0.1:0"]);
    let mut child = pier()
        .args(["send", "-i", &chat.addr, "--framing", "lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"zoe\n/list\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "Welcome to pier chat! Enter your name:\nHello zoe! You can now chat.\nOnline (1): zoe\n"
    );
}

#[test]
fn bench_checks_replies_and_compare_measures_pier_next_to_native() {
    let served = Served::start(&["--listen", "127.0.0.1:0", "--framing", "lines"]);
    let out = run(pier().args([
        "bench",
        &served.addr,
        "--framing",
        "lines",
        "--connections",
        "4",
        "--in-flight",
        "8",
        "--requests",
        "400",
        "--json",
    ]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &report["results"][0];
    assert_eq!(r["round_trips"], 400);
    assert_eq!(r["mismatches"], 0);
    assert_eq!(r["errors"], 0);
    assert!(r["p99_us"].as_f64().unwrap() > 0.0);

    // A wrong expectation is counted as mismatches, not hidden: the figures are still printed,
    // but the run fails, naming the first unexpected reply.
    let out = run(pier().args([
        "bench",
        &served.addr,
        "--framing",
        "lines",
        "--connections",
        "2",
        "--requests",
        "20",
        "--size",
        "4",
        "--expect-prefix",
        "Nope: ",
        "--json",
    ]));
    assert!(!out.status.success(), "mismatches must fail the run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["results"][0]["mismatches"], 20);
    assert_eq!(report["results"][0]["first_unexpected_reply"], "Echo: abcd");
    let err = stderr_of(&out);
    assert!(
        err.contains("20 unexpected replies (first: \"Echo: abcd\", expected \"Nope: abcd\")"),
        "{err}"
    );

    let out = run(pier().args([
        "bench",
        "--compare",
        "--framing",
        "length-prefixed",
        "--in-flight",
        "4",
        "--connections",
        "2",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--json",
    ]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let servers: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["native", "pier"]);
    for r in report["results"].as_array().unwrap() {
        assert!(r["round_trips"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["mismatches"], 0, "{r}");
        assert!(r["cpu_us_per_round_trip"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(report["pier_vs_native"]["round_trips"].as_f64().unwrap() > 0.0);

    let out = run(pier().args(["bench", "--compare", "--idle", "200", "--json"]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in report["idle"].as_array().unwrap() {
        assert_eq!(r["memory"]["connections"], 200);
        assert!(
            r["memory"]["rss_after_bytes"].as_u64() >= r["memory"]["rss_before_bytes"].as_u64()
        );
    }
}

#[test]
fn bench_fails_when_connections_fail_naming_the_error_kinds() {
    // Nothing listens on a port just released: every connection is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(pier().args([
        "bench",
        &format!("127.0.0.1:{port}"),
        "--connections",
        "3",
        "--requests",
        "30",
    ]));
    assert!(!out.status.success(), "errors must fail the run");
    let err = stderr_of(&out);
    assert!(
        err.contains("3 connection errors (connect 3; first: connect: "),
        "{err}"
    );
    // The table is still printed, with the errors in it.
    assert!(String::from_utf8_lossy(&out.stdout).contains("errors"));
}

#[test]
fn bench_idle_gives_no_figure_when_the_server_refuses_some_connections() {
    let served = Served::start(&["--max-connections", "20"]);
    let pid = served.child.id().to_string();
    let out = run(pier().args(["bench", &served.addr, "--idle", "40", "--server-pid", &pid]));
    assert!(!out.status.success(), "a figure was reported");
    assert!(
        stderr_of(&out).contains("closed 20 of 40 idle connections"),
        "{}",
        stderr_of(&out)
    );
    let out = run(pier().args(["bench", &served.addr, "--idle", "20", "--server-pid", &pid]));
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn bench_compares_over_tls_and_measures_handshakes() {
    for extra in [&[][..], &["--reconnect"][..]] {
        let out = run(pier()
            .args([
                "bench",
                "--compare",
                "--tls",
                "--framing",
                "lines",
                "--connections",
                "2",
                "--duration",
                "300ms",
                "--warmup",
                "0s",
                "--rounds",
                "1",
                "--json",
            ])
            .args(extra));
        assert!(out.status.success(), "{}", stderr_of(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["tls"], true);
        for r in report["results"].as_array().unwrap() {
            assert!(r["round_trips"].as_u64().unwrap() > 0, "{extra:?}: {r}");
            assert_eq!(r["mismatches"], 0, "{extra:?}: {r}");
            assert_eq!(r["errors"], 0, "{extra:?}: {r}");
        }
    }
}

/// The repository's root folder.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repository")
        .to_path_buf()
}

#[test]
fn the_example_pier_toml_serves_every_listener_it_names_tls_included() {
    let dir = tmp().join("example-config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The file as shipped, with its commented-out TLS block switched on...
    let text = std::fs::read_to_string(repo().join("examples/pier.toml")).unwrap();
    let (head, tail) = text
        .split_once("# TLS with SNI routing")
        .expect("examples/pier.toml has a TLS block");
    let tls: Vec<&str> = tail
        .lines()
        .skip_while(|l| !l.starts_with("# [[listener]]"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    assert!(tls.len() > 5, "the TLS block is commented out line by line");
    let config = dir.join("pier.toml");
    std::fs::write(&config, format!("{head}{}\n", tls.join("\n"))).unwrap();
    // ...and the certificates `pier cert generate` writes where its comment says.
    let (certs, _) = served::certificates("example-config/certs", &[]);
    assert_eq!(certs, dir.join("certs"));

    // Every address comes from the environment: free ports, never the defaults.
    let echo = format!("127.0.0.1:{}", ports::reserved_port());
    let any = "127.0.0.1:0";
    let env = [
        ("PIER_ADMIN_ADDR", any),
        ("PIER_CHAT_ADDR", any),
        ("PIER_CHAT_WS_ADDR", any),
        ("PIER_ECHO_ADDR", echo.as_str()),
        ("PIER_LPJSON_ADDR", any),
        ("PIER_WEB_ADDR", any),
        ("PIER_FRONT_ADDR", any),
        ("PIER_SECURE_ADDR", any),
    ];
    let served = Served::start_with_env(&["--config", config.to_str().unwrap()], 7, WAIT, &env);
    assert_eq!(served.addr_of("echo"), echo);
    // chat's WebSocket door serves the chat page.
    let page = served::http_get(&served.door_of("chat"), "/");
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");

    // chat (lines): a greeting, then a name.
    let stream = TcpStream::connect(served.addr_of("chat")).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "Welcome to pier chat! Enter your name:\n");
    (&stream).write_all(b"zoe\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "Hello zoe! You can now chat.\n");

    // echo (raw).
    let out = run(pier().args(["send", &echo, "hi"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: hi\n",
        "{}",
        stderr_of(&out)
    );

    // lpjson (length-prefixed JSON).
    let out = run(pier().args([
        "send",
        &served.addr_of("lpjson"),
        r#"{"type":"ping"}"#,
        "--framing",
        "length-prefixed",
    ]));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON reply");
    assert_eq!(reply["type"], "pong", "{reply}");

    // web (http).
    let response = http_get(&served.addr_of("web"), "/time");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // front (lines) → the echo-backend upstream → the echo listener.
    let mut front = served::LineClient::connect(&served.addr_of("front"));
    assert_eq!(front.ask("through the proxy"), "Echo: through the proxy");

    // secure: TLS with the generated files, and SNI routing to the chat tenant.
    let secure = served.addr_of("secure");
    let ca = certs.join("ca.pem");
    let out = run(pier().args([
        "send",
        &secure,
        "hi",
        "--framing",
        "lines",
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: hi\n",
        "{}",
        stderr_of(&out)
    );
    let out = run(pier().args([
        "send",
        &secure,
        "hi",
        "--framing",
        "lines",
        "--tls",
        "--insecure",
        "--server-name",
        "chat.localhost",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Welcome to pier chat! Enter your name:\n",
        "{}",
        stderr_of(&out)
    );

    // The admin endpoint.
    let response = http_get(&served.admin_addr(), "/healthz");
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("ok\n"),
        "{response}"
    );
}

#[test]
fn the_embedding_example_listens_where_it_is_told() {
    // Built by `cargo test` (examples are part of its default targets); a run limited to this
    // test file builds it here with the same profile.
    let profile_dir = Path::new(served::PIER).parent().expect("target/PROFILE");
    let exe = profile_dir.join("examples").join("embed");
    if !exe.exists() {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let out = run(Command::new(env!("CARGO"))
            .args(["build", "--example", "embed", "--profile", profile])
            .current_dir(repo()));
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    let mut by_argument = Command::new(&exe);
    by_argument.arg("127.0.0.1:0");
    let mut by_environment = Command::new(&exe);
    by_environment.env("PIER_EMBED_ADDR", "127.0.0.1:0");
    for command in [&mut by_argument, &mut by_environment] {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the embed example");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("embedded pier on ")
            .unwrap_or_else(|| panic!("no address line: {line:?}"))
            .to_string();
        assert_ne!(addr, "127.0.0.1:7070", "the default address was used");
        let out = run(pier().args(["send", &addr, "hi", "--framing", "lines"]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Echo: hi\n",
            "{}",
            stderr_of(&out)
        );
        // Ctrl-C drains and exits cleanly.
        assert!(
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the example did not exit on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn the_example_python_client_gets_the_echo() {
    let served = Served::start(&[]);
    let out = run(Command::new("python3").args([
        repo().join("examples/echo_client.py").to_str().unwrap(),
        "127.0.0.1",
        &served.port().to_string(),
        "Hello example",
    ]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Echo: Hello example\n"
    );
}
