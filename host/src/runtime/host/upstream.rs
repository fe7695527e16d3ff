//! `pier:plugin/upstream`: requests to the upstreams the listener grants. The grant check is
//! here: an upstream the listener does not grant does not exist for the plugin
//! (`not-granted`), and the wait for its reply is excused from the call deadline (the
//! upstream's own `request_timeout` bounds it).

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker};

use super::{Excuse, HostState};
use crate::runtime::bindings::pier::plugin::upstream;

impl upstream::Host for HostState {
    async fn request(
        &mut self,
        name: String,
        frame: Vec<u8>,
    ) -> Result<Vec<u8>, upstream::UpstreamError> {
        use crate::upstream::UpstreamError as E;
        use upstream::UpstreamError as W;
        let Some(pool) = self.ctx.upstreams.get(&name) else {
            return Err(W::NotGranted);
        };
        // The upstream's own `request_timeout` bounds this wait, not the call deadline.
        let excuse = Excuse::begin(&self.excused);
        let result = pool.request(Bytes::from(frame)).await;
        drop(excuse);
        self.resumed_from_wait = true;
        match result {
            Ok(reply) => Ok(reply.to_vec()),
            Err(E::NotGranted) => Err(W::NotGranted),
            Err(E::Unavailable) => Err(W::Unavailable),
            Err(E::Timeout) => Err(W::Timeout),
            Err(E::FrameTooLarge) => Err(W::FrameTooLarge),
            Err(E::InvalidFrame) => Err(W::InvalidFrame),
        }
    }

    fn granted(&mut self) -> Vec<String> {
        self.ctx.upstreams.names()
    }
}

/// Registers `upstream` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    upstream::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
