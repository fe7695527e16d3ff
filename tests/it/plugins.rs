//! Loading and checking plugins: every way a file can fail to be a pier plugin is refused with
//! a message naming the problem, and compiled plugins are cached on disk by content and engine.

use std::path::PathBuf;
use std::sync::Arc;

use pier::{LoadError, Runtime, RuntimeConfig};

fn runtime_with_cache(dir: &str) -> Arc<Runtime> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn load_err(wat: &str) -> LoadError {
    let bytes = wat::parse_str(wat).expect("valid wat");
    let rt = runtime_with_cache("plugins-errors-cache");
    rt.load_plugin("test", &bytes).expect_err("must be refused")
}

#[test]
fn an_import_pier_does_not_provide_is_named() {
    let err = load_err(r#"(component (import "acme:db/query@1.0.0" (instance)))"#);
    assert!(
        matches!(err, LoadError::UnsupportedImport(ref name) if name == "acme:db/query@1.0.0"),
        "{err}"
    );
    assert!(err.to_string().contains("acme:db/query@1.0.0"));
}

#[test]
fn a_missing_handler_export_lists_what_is_exported() {
    let err = load_err(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "something-else" (func $f)))"#,
    );
    assert!(matches!(err, LoadError::MissingHandler(_)), "{err}");
    assert!(err.to_string().contains("something-else"), "{err}");
}

#[test]
fn a_handler_missing_functions_is_named() {
    let err = load_err(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $h (export "on-open" (func $f)))
            (export "pier:plugin/handler@0.1.0" (instance $h)))"#,
    );
    assert!(matches!(err, LoadError::WorldMismatch(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("on-frame") && text.contains("on-close"),
        "{text}"
    );
}

#[test]
fn a_handler_with_wrong_signatures_is_refused() {
    let err = load_err(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $h
                (export "on-open" (func $f))
                (export "on-frame" (func $f))
                (export "on-close" (func $f)))
            (export "pier:plugin/handler@0.1.0" (instance $h)))"#,
    );
    assert!(matches!(err, LoadError::WorldMismatch(_)), "{err}");
    assert!(
        err.to_string()
            .contains("function `on-open` has the wrong type"),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_by_content_and_survive_a_restart() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins-cache-test");
    let _ = std::fs::remove_dir_all(&dir);
    let echo = pier::builtin::find("echo").unwrap().wasm;

    let first = runtime_with_cache("plugins-cache-test");
    let loaded = first.load_plugin("echo", echo).unwrap();
    assert!(!loaded.from_cache, "nothing cached yet");
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        name.starts_with(&loaded.version) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A new engine with the same settings (a restart) loads the artifact instead of compiling.
    let restarted = runtime_with_cache("plugins-cache-test");
    assert!(restarted.load_plugin("echo", echo).unwrap().from_cache);

    // A corrupt artifact is ignored and replaced, never trusted.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let again = runtime_with_cache("plugins-cache-test");
    assert!(!again.load_plugin("echo", echo).unwrap().from_cache);
    assert!(
        runtime_with_cache("plugins-cache-test")
            .load_plugin("echo", echo)
            .unwrap()
            .from_cache
    );

    // Different settings that change compiled code get their own entry.
    let other = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.clone()),
        memory_limit: 8 * 1024 * 1024,
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .unwrap();
    assert!(!other.load_plugin("echo", echo).unwrap().from_cache);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

#[test]
fn a_plugin_that_traps_in_its_start_up_code_is_refused_at_load() {
    let bytes = std::fs::read(pier::builtin::guest_path("pier_trapstart.wasm")).expect("built");
    let rt = runtime_with_cache("plugins-errors-cache");
    let err = rt
        .load_plugin("trapstart", &bytes)
        .expect_err("must be refused");
    assert!(matches!(err, LoadError::StartupFailed(_)), "{err}");
    assert!(err.to_string().contains("start-up code"), "{err}");
}

/// The one cache entry of `dir` whose name starts with `version`.
fn entry_of(dir: &std::path::Path, version: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(version) && n.ends_with(".cwasm"))
        })
        .unwrap_or_else(|| panic!("a cache entry for {version} in {}", dir.display()))
}

#[test]
fn damaged_or_foreign_cache_artifacts_are_recompiled_never_run() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins-cache-damage");
    let _ = std::fs::remove_dir_all(&dir);
    let echo = pier::builtin::find("echo").unwrap().wasm;
    let chat = pier::builtin::find("chat").unwrap().wasm;
    let cached = || runtime_with_cache("plugins-cache-damage");
    let echo_version = cached().load_plugin("echo", echo).unwrap().version.clone();
    let chat_version = cached().load_plugin("chat", chat).unwrap().version.clone();
    let echo_entry = entry_of(&dir, &echo_version);
    let chat_entry = entry_of(&dir, &chat_version);
    let good = std::fs::read(&echo_entry).unwrap();
    assert!(good.len() > 4096);

    // Every damage below is detected by the digest: the artifact is compiled again (not run),
    // and the rewritten entry is good for the next start.
    let mut damages: Vec<(&str, Vec<u8>)> = Vec::new();
    // wasmtime's header (the ELF header and its own checks) intact, the code in the middle
    // overwritten: before the digest this started and died with SIGILL/SIGSEGV, or answered
    // garbage.
    let mut garbage_code = good.clone();
    let middle = garbage_code.len() / 2;
    for b in &mut garbage_code[middle - 1024..middle + 1024] {
        *b = 0xCC;
    }
    damages.push(("code section overwritten, header intact", garbage_code));
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x01;
    damages.push(("one bit flipped", flipped));
    damages.push(("truncated to half", good[..good.len() / 2].to_vec()));
    damages.push(("truncated by one byte", good[..good.len() - 1].to_vec()));
    damages.push(("empty", Vec::new()));
    // Another plugin's (valid) artifact saved under echo's name.
    damages.push((
        "chat's artifact under echo's name",
        std::fs::read(&chat_entry).unwrap(),
    ));

    for (what, bytes) in damages {
        std::fs::write(&echo_entry, &bytes).unwrap();
        let loaded = cached().load_plugin("echo", echo).unwrap();
        assert!(!loaded.from_cache, "{what}: must be recompiled, not loaded");
        assert_eq!(loaded.version, echo_version);
        assert_eq!(
            std::fs::read(&echo_entry).unwrap(),
            good,
            "{what}: the entry is rewritten"
        );
        let reloaded = cached().load_plugin("echo", echo).unwrap();
        assert!(reloaded.from_cache, "{what}: the rewritten entry is used");
    }
}

#[tokio::test]
async fn truncating_a_cache_artifact_under_a_running_plugin_does_not_crash_it() {
    use pier::Framing;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins-cache-truncate");
    let _ = std::fs::remove_dir_all(&dir);
    let echo = pier::builtin::find("echo").unwrap().wasm;
    let version = runtime_with_cache("plugins-cache-truncate")
        .load_plugin("echo", echo)
        .unwrap()
        .version
        .clone();
    // Loaded from the cache, then the file is cut to nothing while it serves: with a mapped
    // file, touching code on the truncated pages was a SIGBUS that killed the whole server.
    let runtime = runtime_with_cache("plugins-cache-truncate");
    let plugin = runtime.load_plugin("echo", echo).unwrap();
    assert!(plugin.from_cache);
    let entry = entry_of(&dir, &version);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(0)
        .unwrap();
    let server = pier::Server::builder()
        .runtime(runtime)
        .workers(1)
        .drain_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let shared = pier::Listener::builder("t", plugin)
        .framing(Framing::Lines)
        .max_connections(16)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.add(listener, shared).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = stopped.await;
        server.shutdown().await;
    });
    let wait = std::time::Duration::from_secs(30);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(read));
    for i in 0..50 {
        let line = format!("frame {i}");
        tokio::io::AsyncWriteExt::write_all(&mut write, format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let reply = tokio::time::timeout(wait, lines.next_line())
            .await
            .expect("a reply in time")
            .unwrap();
        assert_eq!(reply, Some(format!("Echo: {line}")));
    }
    drop(write);
    let _ = stop.send(());
    tokio::time::timeout(wait, task)
        .await
        .expect("stops")
        .unwrap();
}
