//! Test plugin, version 1: counts frames in guest memory and exports `state-handler` so the
//! count survives a reload to version 2 (`guests/test/stateful-v2`). See `handler.rs`.

/// What replies are prefixed with.
const VERSION: &str = "v1";

include!("handler.rs");
