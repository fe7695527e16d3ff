//! Everything between a client's socket and a plugin call: accepting on a listener's address,
//! admission, the worker threads, one task per connection, the plain or TLS transport, and the
//! framings that cut bytes into frames.
//!
//! - [`server`]: the worker pool and the accept loops of any number of listeners, drain.
//! - [`admission`]: connection limits per listener and per client address.
//! - [`proxy`]: the PROXY protocol header a load balancer sends before its client's bytes.
//! - [`worker`]: worker threads, each with its own runtime; connections are pinned to one.
//! - [`connection`]: one client — read, frame, call the plugin, write replies.
//! - [`transport`]: plain TCP or TLS streams, read into a per-worker scratch buffer.
//! - [`tls`]: rustls server and client settings, peer identity, `pier cert generate`.
//! - [`framing`]: raw, lines, length-prefixed, HTTP/1.1 and WebSocket framing with a frame-size
//!   limit.
//! - [`upgrade`]: the WebSocket opening handshake and the page a `websocket` door serves.

pub mod admission;
pub mod connection;
pub mod framing;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod worker;
