//! `pier:plugin/log`: guest log lines into pier's log, cut to a bounded length and under the
//! tenant's output rate.

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::runtime::bindings::Level;
use crate::runtime::bindings::pier::plugin::log;

/// Longest guest log message kept; the rest is cut so a guest cannot flood the log with one call.
const MAX_LOG_MESSAGE: usize = 4096;

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.quiet {
            return;
        }
        let message = truncate(&message, MAX_LOG_MESSAGE);
        let listener = &*self.ctx.name;
        let plugin = &*self.plugin;
        let verdict = self.ctx.output.admit(message.len());
        if !crate::runtime::output::note_drops(&verdict, listener, plugin) {
            return;
        }
        let conn = self.current;
        match level {
            Level::Trace => {
                tracing::trace!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "pier::guest", listener, plugin, conn, "{message}")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Registers `log` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
