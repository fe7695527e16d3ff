//! The generated `Guest` traits of every world, implemented for any type implementing the SDK's
//! traits. Each world generates its own `handler` export (its own `Refusal` record among it), so
//! the impls are written once here by a macro and the plugin author never sees them.

use crate::worlds;
use crate::{Batched, CloseReason, ConnectionId, Peer, Plugin, Refusal, Stateful, Timers};

/// Implements world `$w`'s `handler::Guest` for every [`Plugin`].
macro_rules! handler {
    ($($w:ident),*) => {$(
        impl<T: Plugin> worlds::$w::exports::pier::plugin::handler::Guest for T {
            fn on_open(
                peer: Peer,
            ) -> Result<Option<Vec<u8>>, worlds::$w::exports::pier::plugin::handler::Refusal> {
                T::on_open(peer).map_err(|Refusal { reason, message }| {
                    worlds::$w::exports::pier::plugin::handler::Refusal { reason, message }
                })
            }

            fn on_frame(id: ConnectionId, frame: Vec<u8>) -> Option<Vec<u8>> {
                T::on_frame(id, &frame)
            }

            fn on_close(id: ConnectionId, reason: CloseReason) {
                T::on_close(id, reason)
            }
        }
    )*};
}

handler!(plugin);

/// Implements world `$w`'s `timer_handler::Guest` for every [`Timers`].
macro_rules! timer_handler {
    ($($w:ident),*) => {$(
        impl<T: Timers> worlds::$w::exports::pier::plugin::timer_handler::Guest for T {
            fn on_timer(id: ConnectionId, timer: crate::timers::TimerId) -> Option<Vec<u8>> {
                T::on_timer(id, timer)
            }
        }
    )*};
}

timer_handler!(timers);

/// Implements world `$w`'s `batch_handler::Guest` for every [`Batched`].
macro_rules! batch_handler {
    ($($w:ident),*) => {$(
        impl<T: Batched> worlds::$w::exports::pier::plugin::batch_handler::Guest for T {
            fn on_frames(id: ConnectionId, data: Vec<u8>, lengths: Vec<u32>) -> (Vec<u8>, Vec<i32>) {
                replies::<T>(id, &data, &lengths)
            }
        }
    )*};
}

batch_handler!(batched);

/// Implements world `$w`'s `state_handler::Guest` for every [`Stateful`].
macro_rules! state_handler {
    ($($w:ident),*) => {$(
        impl<T: Stateful> worlds::$w::exports::pier::plugin::state_handler::Guest for T {
            fn snapshot() -> Vec<u8> {
                T::snapshot()
            }

            fn restore(state: Vec<u8>) {
                T::restore(state)
            }
        }
    )*};
}

state_handler!(stateful);

/// Answers a batch frame by frame, as `batch-handler` asks: the replies back to back and each
/// one's length, -1 for none. Lengths running past the data are cut at its end (the host never
/// sends such a batch; the contract says they are ignored).
fn replies<T: Batched>(id: ConnectionId, data: &[u8], lengths: &[u32]) -> (Vec<u8>, Vec<i32>) {
    // Room for the replies when each is about its frame plus a short prefix (echo-like); a
    // plugin answering at length grows it as a Vec does.
    let mut out = Vec::with_capacity(data.len() + 16 * lengths.len());
    let mut reply_lengths = Vec::with_capacity(lengths.len());
    let mut start = 0usize;
    for &len in lengths {
        let end = start.saturating_add(len as usize).min(data.len());
        let before = out.len();
        let replied = T::reply_into(id, &data[start..end], &mut out);
        reply_lengths.push(if replied {
            i32::try_from(out.len() - before).unwrap_or(i32::MAX)
        } else {
            out.truncate(before);
            -1
        });
        start = end;
    }
    (out, reply_lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Upper;

    impl Plugin for Upper {
        fn on_frame(_id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
            (frame != b"quiet").then(|| frame.to_ascii_uppercase())
        }
    }

    impl Batched for Upper {}

    #[test]
    fn a_batch_is_answered_frame_by_frame_with_minus_one_for_no_reply() {
        let (out, lengths) = replies::<Upper>(1, b"abquietcde", &[2, 5, 3]);
        assert_eq!(out, b"ABCDE");
        assert_eq!(lengths, vec![2, -1, 3]);
    }

    #[test]
    fn lengths_running_past_the_data_are_cut_at_its_end() {
        let (out, lengths) = replies::<Upper>(1, b"abc", &[2, 9, 4]);
        assert_eq!(out, b"ABC");
        assert_eq!(lengths, vec![2, 1, 0]);
    }
}
