//! What one listener (a tenant) gives its plugin's instances on every worker: its name, its
//! connection registry, fault counts, metrics, granted upstreams, the output rate, and the
//! type of the operator's `plugin_config`. Shared by the host functions and the WASI context,
//! so neither depends on the other for it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The listener's `plugin_config` table, as strings, handed to the guest by the `config`
/// interface.
pub type PluginConfig = BTreeMap<String, String>;

/// What one listener gives its plugin instances: its registry and its name for log lines.
pub struct ListenerContext {
    /// The listener's name, on every log line.
    pub name: Arc<str>,
    /// The listener's connections.
    pub hub: Arc<dyn crate::tenant::hub::Hub>,
    /// Faults of the listener's plugin, by kind.
    pub faults: super::fault::FaultCounts,
    /// The listener's metrics (instances alive; versions' metrics hang off the slot).
    pub metrics: Arc<crate::ops::metrics::ListenerMetrics>,
    /// The upstreams the listener grants its plugin.
    pub upstreams: crate::upstream::GrantSlot,
    /// The rate limit on the plugin's log lines and stdout/stderr.
    pub output: Arc<super::output::OutputRate>,
}
