//! Test plugin, version 2 of `guests/test/stateful`: the same handler, replying `v2 #N: ...`.

/// What replies are prefixed with.
const VERSION: &str = "v2";

include!("../../stateful/src/handler.rs");
