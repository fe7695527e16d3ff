//! The Python virtualenv the WebSocket tests drive pier with: `websockets` and
//! `websocket-client` (two independent client implementations) and Playwright (the browser
//! test, on Debian's chromium). `.ci/run` makes it and says where with `PIER_WS_VENV`; run
//! alone, the first test that needs it makes it under the tests' scratch folder.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// What the WebSocket tests import (also read by `.ci/run`).
const REQUIREMENTS: &str = include_str!("../scripts/requirements.txt");

/// The venv's python, made (once per test process) if missing.
pub fn python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _once = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let venv = std::env::var_os("PIER_WS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::served::tmp().join("ws-venv"));
    let python = venv.join("bin/python");
    let ready = venv.join(".pier-ready");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(REQUIREMENTS) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(ok.success(), "python3 -m venv failed");
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("-r")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/it/scripts/requirements.txt"
            ))
            .status()
            .expect("pip install");
        assert!(ok.success(), "pip install -r requirements.txt failed");
        std::fs::write(&ready, REQUIREMENTS).expect("mark the venv ready");
    }
    python
}
