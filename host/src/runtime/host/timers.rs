//! `pier:plugin/timers`: one-shot and periodic timers per connection, delivered to
//! `timer-handler.on-timer` by the connection task.

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::HostState;
use crate::runtime::bindings::pier::plugin::timers;
use crate::tenant::hub::{self, ConnectionId};

impl timers::Host for HostState {
    fn start(
        &mut self,
        id: ConnectionId,
        delay_ms: u64,
        interval_ms: Option<u64>,
    ) -> Result<timers::TimerId, timers::TimerError> {
        use timers::TimerError as E;
        if !self.has_timer_handler {
            return Err(E::NoHandler);
        }
        self.ctx
            .hub
            .start_timer(
                id,
                Duration::from_millis(delay_ms),
                interval_ms.map(Duration::from_millis),
            )
            .map_err(|e| match e {
                hub::TimerError::UnknownConnection => E::UnknownConnection,
                hub::TimerError::TooMany => E::TooMany,
            })
    }

    fn cancel(&mut self, timer: timers::TimerId) -> bool {
        self.ctx.hub.cancel_timer(timer)
    }
}

/// Registers `timers` with the linker.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    timers::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}
