//! Loading and checking plugins: every way a file can fail to be a pier plugin is refused with
//! a message naming the problem, and compiled plugins are cached on disk by content and engine.

use std::path::PathBuf;
use std::sync::Arc;

use pier::runtime::{LoadError, Runtime, RuntimeConfig};

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
