//! The built-in echo plugin: `Echo: ` + each frame (kn-sock's reply format), batched alloc-free.
struct Echo;
impl pier_sdk::Plugin for Echo {
    fn on_frame(_id: u64, frame: &[u8]) -> Option<Vec<u8>> {
        Some([b"Echo: ", frame].concat())
    }
}
impl pier_sdk::Batched for Echo {
    fn reply_into(_id: u64, frame: &[u8], out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(b"Echo: ");
        out.extend_from_slice(frame);
        true
    }
}
pier_sdk::export!(Echo, batched);
