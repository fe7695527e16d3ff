//! The built-in proxy plugin: each client frame goes to an upstream the listener grants and the
//! upstream's reply frame goes back to the client — a TLS-terminating, framing-aware front for
//! plain TCP servers. The host pools the upstream connections, balances over the upstream's
//! addresses and fails over between them; this plugin only picks the upstream.
//!
//! `plugin_config`:
//! - `upstream`: which granted upstream to use (default: the first the listener grants);
//! - `on_error`: `reply` (default) answers a failed request with
//!   `error: upstream NAME: REASON`, `close` closes the client's connection instead.

use pier_sdk::Level;
use pier_sdk::upstream::{self, UpstreamError};
use pier_sdk::{ConnectionId, Plugin};
use pier_sdk::{config, connections, log};

struct Proxy;

/// The upstream to forward to.
fn target() -> Option<String> {
    config::get("upstream").or_else(|| upstream::granted().into_iter().next())
}

fn reason(err: UpstreamError) -> &'static str {
    match err {
        UpstreamError::NotGranted => "not-granted",
        UpstreamError::Unavailable => "unavailable",
        UpstreamError::Timeout => "timeout",
        UpstreamError::FrameTooLarge => "frame-too-large",
        UpstreamError::InvalidFrame => "invalid-frame",
    }
}

impl Plugin for Proxy {
    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let Some(name) = target() else {
            log::log(Level::Error, "no upstream granted to this listener");
            return Some(b"error: no upstream".to_vec());
        };
        match upstream::request(&name, frame) {
            Ok(reply) => Some(reply),
            Err(err) => {
                let message = format!("upstream {name}: {}", reason(err));
                log::log(Level::Warn, &message);
                if config::get("on_error").as_deref() == Some("close") {
                    connections::close(id);
                    None
                } else {
                    Some(format!("error: {message}").into_bytes())
                }
            }
        }
    }
}

pier_sdk::export!(Proxy);
