//! The built-in echo plugin: every frame is answered with `Echo: ` and the frame, the reply
//! format of kn-sock's clients and the length-prefixed JSON protocol's `echo`. No state at all;
//! pipelined frames arrive in batches.

struct Echo;

impl pier_sdk::Plugin for Echo {
    fn on_frame(_id: pier_sdk::ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        Some([b"Echo: ", frame].concat())
    }
}

impl pier_sdk::Batched for Echo {}

pier_sdk::export!(Echo, batched);
