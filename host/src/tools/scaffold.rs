//! `pier new NAME --lang rust|python|js`: a plugin project that builds as it is and passes
//! `pier check`, with the WIT contract vendored in `wit/` (and, for Rust, pier's SDK in
//! `vendor/pier-sdk`) so it builds anywhere.
//!
//! The Python and JavaScript projects are the repository's `examples/python-echo` and
//! `examples/js-echo` (embedded here at build time, so what `pier new` writes is what CI builds
//! and serves), with their paths pointed at the vendored WIT and the output named after the
//! project.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The plugin contract, vendored into every project.
const WIT: &str = include_str!("../../../wit/plugin.wit");

const PYTHON_APP: &str = include_str!("../../../examples/python-echo/app.py");
const PYTHON_BUILD: &str = include_str!("../../../examples/python-echo/build.sh");
const JS_HANDLER: &str = include_str!("../../../examples/js-echo/echo.js");
const JS_BUILD: &str = include_str!("../../../examples/js-echo/build.sh");
const JS_PACKAGE: &str = include_str!("../../../examples/js-echo/package.json");

/// pier's Rust SDK (`guests/sdk`), vendored into Rust projects as `vendor/pier-sdk` so they
/// build anywhere without it being published; its bindings read `../../wit`, the project's `wit/`.
const SDK_LIB: &str = include_str!("../../../guests/sdk/src/lib.rs");
const SDK_ADAPT: &str = include_str!("../../../guests/sdk/src/adapt.rs");

const RUST_LIB: &str = r#"//! A pier plugin: replies `Echo: ` + each frame. The contract is `wit/plugin.wit`; the SDK
//! (`vendor/pier-sdk`) has the host's interfaces and the optional callbacks.

use pier_sdk::{ConnectionId, Plugin};

struct Echo;

impl Plugin for Echo {
    fn on_frame(_id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        Some([b"Echo: ", frame].concat())
    }
}

pier_sdk::export!(Echo);
"#;

/// The vendored SDK's manifest: the SDK's own, without the guests workspace to inherit from.
const SDK_MANIFEST: &str = r#"[package]
name = "pier-sdk"
description = "Write pier plugins in Rust (vendored by `pier new`)"
version = "0.1.0"
edition = "2024"

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
"#;

/// The languages `pier new` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with pier's SDK (vendored), built with cargo for wasm32-wasip2.
    Rust,
    /// Python with componentize-py (from PyPI, into a local virtualenv).
    Python,
    /// JavaScript with componentize-js (from npm, installed locally).
    Js,
}

/// Writes a new plugin project `name` in `dir`; returns the command that builds it and where
/// the component will be.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<(String, PathBuf)> {
    check_name(name)?;
    if dir.exists()
        && fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let files = files(name, lang);
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "sh") {
            make_executable(&path)?;
        }
    }
    Ok(match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2".into(),
            dir.join(format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            )),
        ),
        Lang::Python | Lang::Js => ("./build.sh".into(), dir.join(format!("{name}.wasm"))),
    })
}

/// A name that is a valid Cargo package, Python module file and npm package name.
fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "plugin name `{name}`: use lower-case letters, digits, `-` and `_`, starting with a letter"
        );
    }
    Ok(())
}

/// The project's files, relative to its folder.
fn files(name: &str, lang: Lang) -> Vec<(&'static str, String)> {
    let wasm = format!("{name}.wasm");
    let mut files = vec![("wit/plugin.wit", WIT.to_string())];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml", rust_manifest(name)));
            files.push(("src/lib.rs", RUST_LIB.to_string()));
            files.push(("vendor/pier-sdk/Cargo.toml", SDK_MANIFEST.to_string()));
            files.push(("vendor/pier-sdk/src/lib.rs", SDK_LIB.to_string()));
            files.push(("vendor/pier-sdk/src/adapt.rs", SDK_ADAPT.to_string()));
            files.push(("README.md", readme(
                name,
                "rustup target add wasm32-wasip2 && cargo build --release --target wasm32-wasip2",
                &format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_")),
                "src/lib.rs",
            )));
            files.push((".gitignore", "target/\n".into()));
        }
        Lang::Python => {
            files.push((
                "app.py",
                PYTHON_APP.replace("examples/python-echo/echo.wasm", &wasm),
            ));
            files.push(("build.sh", vendored_build(PYTHON_BUILD, &wasm)));
            files.push(("README.md", readme(name, "./build.sh", &wasm, "app.py")));
            files.push((".gitignore", format!(".venv/\n__pycache__/\n{wasm}\n")));
        }
        Lang::Js => {
            files.push((
                "handler.js",
                JS_HANDLER.replace("examples/js-echo/echo.wasm", &wasm),
            ));
            files.push((
                "build.sh",
                vendored_build(JS_BUILD, &wasm).replace("echo.js", "handler.js"),
            ));
            files.push(("package.json", JS_PACKAGE.replace("pier-js-echo", name)));
            files.push(("README.md", readme(name, "./build.sh", &wasm, "handler.js")));
            files.push((
                ".gitignore",
                format!("node_modules/\npackage-lock.json\n{wasm}\n"),
            ));
        }
    }
    files
}

/// An example's build script, using the project's own `wit/` and writing `wasm`.
fn vendored_build(script: &str, wasm: &str) -> String {
    script
        .replace("$here/../../wit", "$here/wit")
        .replace("echo.wasm", wasm)
}

fn rust_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
pier-sdk = {{ path = "vendor/pier-sdk" }}

# Small, fast plugins: pier compiles the component once and caches the result.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A project of its own, even when created inside another Cargo workspace.
[workspace]
"#
    )
}

fn readme(name: &str, build: &str, wasm: &str, source: &str) -> String {
    format!(
        "# {name}\n\nA pier plugin: edit `{source}`, build with `{build}`, check with \
         `pier check {wasm}`, run with `pier serve {wasm} --framing lines --watch`.\n\
         The contract is `wit/plugin.wit`; the guide is pier's `docs/writing-plugins.md`.\n"
    )
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = fs::metadata(path)?.permissions();
    perms.set_mode(0o755);
    fs::set_permissions(path, perms).with_context(|| format!("cannot chmod {}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_every_toolchain() {
        for bad in ["", "Echo", "1echo", "echo.wasm", "my echo", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["echo", "my-echo", "chat_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_vendored_sdk_uses_the_wit_bindgen_the_guests_build_with() {
        let workspace = include_str!("../../../guests/Cargo.toml");
        let line = workspace
            .lines()
            .find(|l| l.starts_with("wit-bindgen = "))
            .expect("the guests workspace names wit-bindgen");
        let spec = line.trim_start_matches("wit-bindgen = ");
        assert!(SDK_MANIFEST.contains(spec), "{spec} not in\n{SDK_MANIFEST}");
        let rust = files("hello", Lang::Rust);
        for path in ["vendor/pier-sdk/src/lib.rs", "vendor/pier-sdk/src/adapt.rs"] {
            assert!(rust.iter().any(|(p, _)| *p == path), "{path}");
        }
    }

    #[test]
    fn language_projects_point_at_their_vendored_wit_and_name_the_output() {
        for lang in [Lang::Python, Lang::Js] {
            let files = files("hello", lang);
            let build = &files.iter().find(|(p, _)| *p == "build.sh").unwrap().1;
            assert!(build.contains("$here/wit"), "{build}");
            assert!(!build.contains("../../wit"), "{build}");
            assert!(
                build.contains("hello.wasm") && !build.contains("echo.wasm"),
                "{build}"
            );
        }
        let js = files("hello", Lang::Js);
        let build = &js.iter().find(|(p, _)| *p == "build.sh").unwrap().1;
        assert!(build.contains("$here/handler.js"), "{build}");
    }
}
