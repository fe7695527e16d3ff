//! The plugins compiled into the binary, selectable by name (`pier serve chat`), each with the
//! framing it is meant for.
//!
//! `host/build.rs` builds every plugin under `guests/` for `wasm32-wasip2`; the ones in
//! `guests/builtin/` are embedded here, those in `guests/test/` stay on disk in [`guest_dir`].

use std::path::{Path, PathBuf};

use crate::net::framing::Framing;

/// A plugin shipped inside the binary.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    /// The name it is selected by.
    pub name: &'static str,
    /// What it does, for `--help` and `pier check`.
    pub summary: &'static str,
    /// The framing it is meant for, used when `--framing` is not given.
    pub framing: Framing,
    /// The component.
    pub wasm: &'static [u8],
}

/// Every built-in plugin.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "echo",
        summary: "replies `Echo: ` followed by each frame",
        framing: Framing::Raw,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_echo.wasm")),
    },
    Builtin {
        name: "chat",
        summary: "a chat room for nc/telnet: names, /list, /nick, /quit",
        framing: Framing::Lines,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_chat.wasm")),
    },
    Builtin {
        name: "http",
        summary: "HTTP/1.1: / (HTML), /time and /stats (JSON)",
        framing: Framing::Http,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_http.wasm")),
    },
    Builtin {
        name: "stats",
        summary: "answers each line with a line of JSON: live listener and connection figures",
        framing: Framing::Lines,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_stats.wasm")),
    },
    Builtin {
        name: "lpjson",
        summary: "the length-prefixed JSON protocol: ping, echo, broadcast, get_stats",
        framing: Framing::LengthPrefixed,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_lpjson.wasm")),
    },
    Builtin {
        name: "proxy",
        summary: "forwards each frame to a granted upstream (plugin_config.upstream) and returns its reply",
        framing: Framing::Lines,
        wasm: include_bytes!(concat!(env!("PIER_GUEST_DIR"), "/pier_proxy.wasm")),
    },
];

/// Looks a built-in plugin up by name.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The names of the built-in plugins, for error messages.
pub fn names() -> String {
    BUILTINS
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the build put every guest component, including test-only ones such as
/// `pier_faulty.wasm`. Only meaningful on the machine that built the binary.
pub fn guest_dir() -> &'static Path {
    Path::new(env!("PIER_GUEST_DIR"))
}

/// The path of the built guest `file` (e.g. `"pier_faulty.wasm"`).
pub fn guest_path(file: &str) -> PathBuf {
    guest_dir().join(file)
}
