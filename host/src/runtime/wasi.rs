//! The WASI a guest gets: deny by default. Guests built with a language's standard library
//! (Rust's std, componentize-py, componentize-js) import WASI for clocks, randomness, stdio,
//! environment and files; pier links wasmtime-wasi's implementation, configured so that:
//!
//! - there are no preopened directories (opening any file fails with an error the guest sees),
//!   no environment variables and no arguments;
//! - TCP and UDP sockets cannot be created, and name lookup is denied;
//! - `exit` ends the call with a trap (a fault for that connection), never the host;
//! - stdin is empty; stdout and stderr go to the host log, one line per guest line, tagged
//!   with the plugin (`info` for stdout, `warn` for stderr);
//! - clocks and random work.
//!
//! The context is built on a guest's first WASI call, so guests that import none pay nothing.
//! wasmtime-wasi's functions are async; guest calls already run on fibers (`instance`), which
//! is what makes them usable inside pier's single-threaded workers: the synchronous flavour
//! blocks on a tokio runtime of its own and panics inside another.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::context::ListenerContext;
use super::output::{OutputRate, note_drops};

/// Longest guest output line logged; the rest of the line is dropped.
const MAX_LINE: usize = 4096;

/// Interface prefixes wasmtime-wasi provides (WASI 0.2); other `wasi:` imports are stubbed to
/// trap.
pub const PROVIDED: [&str; 6] = [
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
];

/// Whether pier links the WASI interface `import` (as opposed to stubbing it).
pub fn provides(import: &str) -> bool {
    PROVIDED.iter().any(|prefix| import.starts_with(prefix)) && import.contains("@0.2.")
}

/// A deny-by-default WASI context for one instance of `plugin`; `quiet` drops its output
/// instead of logging it (the scratch instance that checks a plugin at load).
pub fn context(plugin: Arc<str>, tenant: &ListenerContext, quiet: bool) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    if !quiet {
        let output = |kind| GuestOutput {
            plugin: plugin.clone(),
            listener: tenant.name.clone(),
            rate: tenant.output.clone(),
            kind,
        };
        builder
            .stdout(output(Kind::Stdout))
            .stderr(output(Kind::Stderr));
    }
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

#[derive(Clone, Copy)]
enum Kind {
    Stdout,
    Stderr,
}

/// Where a guest's stdout or stderr goes: the host log, within the tenant's output rate.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    listener: Arc<str>,
    rate: Arc<OutputRate>,
    kind: Kind,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.clone()))
    }
}

/// Cuts guest output into lines and logs each; what is left at the end is logged when the
/// stream is dropped (the guest closed it, or its instance went away).
struct LineLogger {
    to: GuestOutput,
    line: Vec<u8>,
    /// Bytes of the current line dropped for being past `MAX_LINE`.
    cut: usize,
}

impl LineLogger {
    fn new(to: GuestOutput) -> Self {
        LineLogger {
            to,
            line: Vec::new(),
            cut: 0,
        }
    }

    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.push(bytes);
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        let kept = bytes.len().min(room);
        self.line.extend_from_slice(&bytes[..kept]);
        self.cut += bytes.len() - kept;
    }

    fn emit(&mut self) {
        let verdict = self.to.rate.admit(self.line.len() + self.cut);
        if !note_drops(&verdict, &self.to.listener, &self.to.plugin) {
            self.line.clear();
            self.cut = 0;
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        let plugin = &self.to.plugin;
        let cut = self.cut;
        match (self.to.kind, cut) {
            (Kind::Stdout, 0) => tracing::info!(plugin = %plugin, stream = "stdout", "{text}"),
            (Kind::Stdout, _) => {
                tracing::info!(plugin = %plugin, stream = "stdout", cut, "{text}…")
            }
            (Kind::Stderr, 0) => tracing::warn!(plugin = %plugin, stream = "stderr", "{text}"),
            (Kind::Stderr, _) => {
                tracing::warn!(plugin = %plugin, stream = "stderr", cut, "{text}…")
            }
        }
        self.line.clear();
        self.cut = 0;
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.emit();
        }
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger() -> LineLogger {
        LineLogger::new(GuestOutput {
            plugin: Arc::from("t@1"),
            listener: Arc::from("t"),
            rate: Arc::new(OutputRate::detached()),
            kind: Kind::Stdout,
        })
    }

    #[test]
    fn output_is_cut_into_lines_across_writes_and_long_lines_are_capped() {
        let mut l = logger();
        l.take(b"hel");
        assert_eq!(l.line, b"hel");
        l.take(b"lo\nwor");
        assert_eq!(l.line, b"wor", "the finished line was emitted");
        l.take(&vec![b'x'; MAX_LINE * 2]);
        assert_eq!(l.line.len(), MAX_LINE);
        assert_eq!(l.cut, MAX_LINE + 3);
        l.take(b"\n");
        assert!(l.line.is_empty() && l.cut == 0);
    }

    #[test]
    fn only_wasi_0_2_interfaces_of_wasmtime_wasi_are_provided() {
        assert!(provides("wasi:cli/stdout@0.2.6"));
        assert!(provides("wasi:filesystem/preopens@0.2.0"));
        assert!(!provides("wasi:http/outgoing-handler@0.2.6"));
        assert!(!provides("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!provides("wasi:cli/stdout@0.3.0"));
    }
}
