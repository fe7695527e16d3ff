//! Plugins in other languages: the Python and JavaScript examples build from their `build.sh`
//! (componentize-py from PyPI, componentize-js from npm) and echo through the real `pier`
//! binary; `pier new` projects build and serve for Rust, Python and JavaScript.
//!
//! The language tools are installed once into the test scratch folder and reused by later runs;
//! compiled components are cached by pier the same way, so only the first run is slow.

use crate::support::served;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use served::{Served, WAIT, pier, tmp};

/// How long a plugin embedding an interpreter may take to compile the first time.
const FIRST_COMPILE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repository")
        .to_path_buf()
}

/// Runs `command`, failing the test with its output if it fails.
fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a project's `build.sh` with the language tools shared between tests and runs. One at
/// a time: the first one installs the tools the others reuse.
fn build_with_script(script: &Path, what: &str) {
    static TOOLS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = TOOLS.lock().unwrap_or_else(|e| e.into_inner());
    let tools = tmp().join("language-tools");
    run(
        Command::new("bash")
            .arg(script)
            .env("PIER_PY_VENV", tools.join("python-venv"))
            .env("PIER_JS_TOOLS", tools.join("js")),
        what,
    );
}

/// Serves `wasm` with lines framing and checks echoes over one connection: a UTF-8 line with
/// multi-byte characters, then 200 pipelined lines answered in order.
fn serves_echo(wasm: &Path) {
    let served = Served::start_within(
        &[wasm.to_str().unwrap(), "--framing", "lines"],
        1,
        FIRST_COMPILE,
    );
    let mut stream = TcpStream::connect(&served.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    stream.write_all("héllo wörld 🌍\n".as_bytes()).unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "Echo: héllo wörld 🌍\n", "{}", served.log());
    let batch: String = (0..200).map(|i| format!("line {i}\n")).collect();
    stream.write_all(batch.as_bytes()).unwrap();
    for i in 0..200 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("Echo: line {i}\n"));
    }
}

#[test]
fn the_python_example_builds_with_its_script_and_echoes_through_pier() {
    let dir = repo().join("examples/python-echo");
    build_with_script(&dir.join("build.sh"), "python-echo/build.sh");
    serves_echo(&dir.join("echo.wasm"));
}

#[test]
fn the_javascript_example_builds_with_its_script_and_echoes_through_pier() {
    let dir = repo().join("examples/js-echo");
    build_with_script(&dir.join("build.sh"), "js-echo/build.sh");
    serves_echo(&dir.join("echo.wasm"));
}

/// `pier new NAME --lang LANG` into a fresh folder; returns the folder.
fn new_project(name: &str, lang: &str) -> PathBuf {
    let dir = tmp().join("pier-new").join(lang).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let out = pier()
        .args(["new", name, "--lang", lang, "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("pier check"), "{printed}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.lines().count() <= 4, "a short README: {readme}");
    assert!(dir.join("wit/plugin.wit").exists(), "the WIT is vendored");
    dir
}

/// `pier check` accepts `wasm`.
fn checks(wasm: &Path) {
    let out = pier().arg("check").arg(wasm).output().unwrap();
    assert!(
        out.status.success(),
        "pier check refused {}: {}",
        wasm.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_new_rust_plugin_builds_passes_check_and_serves() {
    let dir = new_project("hello-rust", "rust");
    run(
        Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&dir)
            // Shared across runs so only the first one compiles wit-bindgen.
            .env("CARGO_TARGET_DIR", tmp().join("pier-new-rust-target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
        "cargo build of the new project",
    );
    let wasm = tmp().join("pier-new-rust-target/wasm32-wasip2/release/hello_rust.wasm");
    checks(&wasm);
    serves_echo(&wasm);
}

#[test]
fn new_python_and_javascript_plugins_build_pass_check_and_serve() {
    for (lang, name) in [("python", "hello-py"), ("js", "hello-js")] {
        let dir = new_project(name, lang);
        build_with_script(&dir.join("build.sh"), "the new project's build.sh");
        let wasm = dir.join(format!("{name}.wasm"));
        checks(&wasm);
        serves_echo(&wasm);
    }
}

#[test]
fn pier_new_refuses_bad_names_and_occupied_folders() {
    let out = pier().args(["new", "Bad Name"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lower-case"));
    let dir = tmp().join("pier-new-occupied");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let out = pier()
        .args(["new", "x", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "mine"
    );
}
