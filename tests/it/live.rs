//! Live operations through the `pier` binary: `--config`, SIGHUP and `pier reload` applying a
//! changed pier.toml, `--watch` picking up a rebuilt plugin, all while a client stays
//! connected; and config mistakes refused before anything binds.

use crate::support::served;

use served::{LineClient, Served, pier, tmp};
use std::path::{Path, PathBuf};

fn scratch(test: &str) -> PathBuf {
    let dir = tmp().join("scratch-live").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn guest(name: &str) -> PathBuf {
    pier::builtin::guest_path(name)
}

/// Replaces `target` with `source` in one rename, as build tools do.
fn replace(target: &Path, source: &Path) {
    let partial = target.with_extension("partial");
    std::fs::copy(source, &partial).unwrap();
    std::fs::rename(&partial, target).unwrap();
}

fn config(a_plugin: &str, with_b: bool) -> String {
    let mut toml = format!(
        r#"
[[listener]]
name = "a"
address = "127.0.0.1:0"
plugin = "{a_plugin}"
framing = "lines"
"#
    );
    if with_b {
        toml.push_str(
            r#"
[[listener]]
name = "b"
address = "127.0.0.1:0"
plugin = "echo"
framing = "lines"
"#,
        );
    }
    toml
}

#[test]
fn sighup_and_pier_reload_apply_a_changed_config_while_a_client_stays_connected() {
    let dir = scratch("sighup");
    std::fs::copy(guest("pier_stateful.wasm"), dir.join("v1.wasm")).unwrap();
    std::fs::copy(guest("pier_stateful_v2.wasm"), dir.join("v2.wasm")).unwrap();
    let toml = dir.join("pier.toml");
    let pid_file = dir.join("pier.pid");
    std::fs::write(&toml, config("v1.wasm", false)).unwrap();
    let served = Served::start(&[
        "--config",
        toml.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let mut client = LineClient::connect(&served.addr_of("a"));
    assert!(client.ask("one").starts_with("v1 #"));

    // SIGHUP: a swaps to v2 on the same connection, b is added. The reload runs in the
    // background; its `reload done` line says everything is in place.
    std::fs::write(&toml, config("v2.wasm", true)).unwrap();
    served.signal("HUP");
    assert!(
        served.wait_for_log_count("SIGHUP: reload done", 1),
        "{}",
        served.log()
    );
    let mut b = LineClient::connect(&served.addr_of("b"));
    assert_eq!(b.ask("hi"), "Echo: hi");
    assert!(client.ask("two").starts_with("v2 #"), "{}", served.log());

    // `pier reload --pid-file`: back to v1, b removed.
    std::fs::write(&toml, config("v1.wasm", false)).unwrap();
    let out = pier()
        .args(["reload", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `pier reload` returns once the signal is sent; the second `reload done` line says the
    // reload is complete (the first is from the SIGHUP above).
    assert!(
        served.wait_for_log_count("SIGHUP: reload done", 2),
        "reload not applied: {}",
        served.log()
    );
    assert!(client.ask("three").starts_with("v1 #"));

    // A config with a mistake is refused as a whole, with one clear line; nothing changes.
    std::fs::write(&toml, config("v2.wasm", false).replace("framing", "framin")).unwrap();
    served.signal("HUP");
    assert!(
        served.wait_for_log("reload refused, nothing changed"),
        "{}",
        served.log()
    );
    assert!(served.log().contains("framin"), "names the unknown key");
    assert!(client.ask("four").starts_with("v1 #"));
}

#[test]
fn watch_serves_a_rebuilt_plugin_on_open_connections_and_refuses_a_broken_one() {
    let dir = scratch("watch");
    let plugin = dir.join("handler.wasm");
    std::fs::copy(guest("pier_stateful.wasm"), &plugin).unwrap();
    let served = Served::start(&[plugin.to_str().unwrap(), "--framing", "lines", "--watch"]);
    assert!(served.wait_for_log("watching"), "{}", served.log());
    let mut client = LineClient::connect(&served.addr);
    assert!(client.ask("one").starts_with("v1 #"));

    // The watcher reloads when it notices the new file, which is only eventually: until then
    // v1 answers, then v2, never anything else.
    replace(&plugin, &guest("pier_stateful_v2.wasm"));
    served::eventually("the rebuilt plugin to serve", || {
        let reply = client.ask("again");
        assert!(
            reply.starts_with("v1 #") || reply.starts_with("v2 #"),
            "{reply}"
        );
        reply.starts_with("v2 #")
    });

    std::fs::write(dir.join("broken.wasm"), b"this is not wasm").unwrap();
    replace(&plugin, &dir.join("broken.wasm"));
    assert!(
        served.wait_for_log("reload refused, the old version keeps serving"),
        "{}",
        served.log()
    );
    assert!(client.ask("still").starts_with("v2 #"));
}

#[test]
fn config_mistakes_are_refused_before_anything_binds_naming_the_key() {
    let dir = scratch("config-errors");
    let cases = [
        (
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\ncolour = \"blue\"\n",
            "colour",
        ),
        (
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\nmax_frame = \"lots\"\n",
            "max_frame",
        ),
        (
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"echo\"\n[listener.limits]\nslow_consumer = \"panic\"\n",
            "slow_consumer",
        ),
        (
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\nplugin = \"nope.wasm\"\n",
            "nope.wasm",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = pier()
            .args(["serve", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(
            err.contains(needle),
            "error for {needle} does not name it: {err}"
        );
        assert!(
            !err.contains("listening on"),
            "bound before validating: {err}"
        );
    }
}
