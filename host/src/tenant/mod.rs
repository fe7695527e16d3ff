//! A tenant: one listener's plugin and everything its connections share — the connection
//! registry plugins call into, the byte budgets over all its connections, and the listener
//! that composes them with its plugin slot, limits and metrics.
//!
//! - [`listener`]: what a listener serves (name, framing, limits, plugin, registry, budgets).
//! - [`hub`]: the connection registry: [`hub::Hub`] for plugins, [`hub::Registry`] for
//!   connection tasks.
//! - [`budget`]: what a tenant may make the host hold (queued output, partial frames,
//!   attributes, groups, timers), in bytes, over all its connections.

pub mod budget;
pub mod hub;
pub mod listener;
