//! Builds the plugins under `guests/` for `wasm32-wasip2` so the host can embed the built-in ones
//! and tests can load the test-only ones.
//!
//! The guests are a separate Cargo workspace, built by a nested `cargo build` with its own target
//! directory inside `OUT_DIR` (sharing the outer target directory would deadlock on its lock).
//! A fresh clone needs no manual step: the `wasm32-wasip2` standard library comes from
//! `rust-toolchain.toml`, and if it is still missing this script asks rustup for it once.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ lives inside the repository")
        .to_path_buf();
    let guests = root.join("guests");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    watch_sources(&root, &guests);
    ensure_target_installed();

    let target_dir = out_dir.join("guests-target");
    let status = guest_cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(guests.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("could not run cargo to build the guests");
    if !status.success() {
        panic!(
            "building the guest plugins failed (see the errors above); \
             try `cargo build --release --target {TARGET} --manifest-path guests/Cargo.toml`"
        );
    }

    // Copy the components out so their location does not depend on the nested target layout.
    let built = target_dir.join(TARGET).join("release");
    let dest = out_dir.join("guests");
    fs::create_dir_all(&dest).expect("create OUT_DIR/guests");
    for entry in fs::read_dir(&built).expect("read the guests' release directory") {
        let path = entry.expect("read a directory entry").path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let name = path.file_name().expect("a file name");
            fs::copy(&path, dest.join(name)).expect("copy a built guest");
        }
    }
    println!("cargo:rustc-env=PIER_GUEST_DIR={}", dest.display());
}

/// A `cargo` command for the guest workspace, cleaned of the settings the outer build passes to
/// build scripts that must not leak into a build for another target (rustflags meant for the
/// host, clippy's wrapper when this runs under `cargo clippy`).
fn guest_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes sure the standard library for `wasm32-wasip2` is installed for the toolchain in use.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot.is_some_and(|s| s.join("lib/rustlib").join(TARGET).exists());
    if installed {
        return;
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (needed to build the plugins)"
    );
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; run it by hand"
        );
    }
}

/// Rebuild when the WIT contract or a guest's sources change (but not for anything a developer
/// may have built inside `guests/target`).
fn watch_sources(root: &Path, guests: &Path) {
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    // The SDK and the crates in guests/builtin and guests/test.
    let folders = [
        guests.to_path_buf(),
        guests.join("builtin"),
        guests.join("test"),
    ];
    for folder in folders {
        for entry in fs::read_dir(&folder).expect("read a guests/ folder") {
            let path = entry.expect("read a directory entry").path();
            if path.join("Cargo.toml").exists() {
                println!(
                    "cargo:rerun-if-changed={}",
                    path.join("Cargo.toml").display()
                );
                println!("cargo:rerun-if-changed={}", path.join("src").display());
            }
        }
    }
}
