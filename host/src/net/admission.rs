//! Who may connect: the per-listener connection limit and the per-client-address limits
//! that defend against floods (open connections and new connections per second per IP).
//!
//! Refused clients are accepted and closed at once (a FIN, no bytes), so they fail fast instead
//! of hanging in the kernel backlog; refusals are counted and logged at most once a second per
//! listener, so a flood cannot flood the log too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// tokio's clock, not std's: the token bucket then runs on time tests can pause and advance.
use tokio::time::Instant;

use crate::limits::Limits;
use crate::sys::lock;

/// Why a client was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_connections` already.
    MaxConnections,
    /// The client's address holds `max_connections_per_address` already.
    PerAddress,
    /// The client's address opened connections faster than `new_connections_per_second`.
    Rate,
}

impl Refused {
    /// Every reason's name, for the refusal counters.
    pub const NAMES: &'static [&'static str] = &[
        "max_connections",
        "max_connections_per_address",
        "new_connections_per_second",
    ];

    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One address's open connections and its token bucket.
struct AddressState {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// Admission control of one listener.
pub struct Admission {
    permits: Arc<Semaphore>,
    per_address: Option<usize>,
    rate: Option<u32>,
    addresses: Mutex<HashMap<IpAddr, AddressState>>,
    /// Refusals since start, by any rule.
    refused: AtomicU64,
    /// Refusals not yet logged, and when the last log line was written.
    unlogged: Mutex<(u64, Option<Instant>)>,
}

/// A connection's place under `max_connections`, before its address is known.
pub struct Pending {
    permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Pending {
    /// Applies the per-address limits to `ip`: the connection's full admission, or the limit
    /// that refuses it (the place is given back).
    pub fn at(self, ip: IpAddr) -> Result<Admitted, Refused> {
        self.admission.admit_address(self.permit, ip)
    }
}

/// Holds a connection's place until it ends.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    address: Option<(Arc<Admission>, IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((admission, ip)) = self.address.take() {
            let mut addresses = lock(&admission.addresses);
            if let Some(state) = addresses.get_mut(&ip) {
                state.open = state.open.saturating_sub(1);
                if state.open == 0 && admission.rate.is_none() {
                    addresses.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// Admission for a listener with `limits`.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Admission {
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_address: limits.max_connections_per_address,
            rate: limits.new_connections_per_second,
            addresses: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            unlogged: Mutex::new((0, None)),
        })
    }

    /// Admits a client from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        self.admit_pending()?.at(ip)
    }

    /// Takes a place under `max_connections` for a client whose address is not known yet (a
    /// PROXY protocol header will say it); [`Pending::at`] applies the per-address limits then.
    pub fn admit_pending(self: &Arc<Self>) -> Result<Pending, Refused> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.refuse(Refused::MaxConnections))?;
        Ok(Pending {
            permit,
            admission: self.clone(),
        })
    }

    fn admit_address(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        ip: IpAddr,
    ) -> Result<Admitted, Refused> {
        if self.per_address.is_none() && self.rate.is_none() {
            return Ok(Admitted {
                _permit: permit,
                address: None,
            });
        }
        let mut addresses = lock(&self.addresses);
        if addresses.len() > 100_000 {
            // Bound the table under a spoofed-address flood: forget addresses with nothing open.
            addresses.retain(|_, s| s.open > 0);
        }
        let now = Instant::now();
        let state = addresses.entry(ip).or_insert_with(|| AddressState {
            open: 0,
            tokens: self.rate.map_or(0.0, f64::from),
            refilled: now,
        });
        if let Some(max) = self.per_address
            && state.open >= max
        {
            drop(addresses);
            return Err(self.refuse(Refused::PerAddress));
        }
        if let Some(rate) = self.rate {
            let rate = f64::from(rate);
            let elapsed = now.duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(rate.max(1.0));
            state.refilled = now;
            if state.tokens < 1.0 {
                drop(addresses);
                return Err(self.refuse(Refused::Rate));
            }
            state.tokens -= 1.0;
        }
        state.open += 1;
        Ok(Admitted {
            _permit: permit,
            address: Some((self.clone(), ip)),
        })
    }

    /// Refusals so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refusal and logs it (with how many went unlogged) at most once a second;
    /// returns `why` for the caller.
    fn refuse(&self, why: Refused) -> Refused {
        self.count_refusal(why.name());
        why
    }

    /// Counts a connection from an address not in the door's `proxy_from` (logged like a limit).
    pub fn note_untrusted(&self, ip: IpAddr) {
        self.count_refusal("proxy_from");
        tracing::debug!(%ip, "refused: not a trusted load balancer (proxy_from)");
    }

    fn count_refusal(&self, limit: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut unlogged = lock(&self.unlogged);
        unlogged.0 += 1;
        let now = Instant::now();
        if unlogged
            .1
            .is_none_or(|last| now.duration_since(last).as_secs() >= 1)
        {
            tracing::warn!(
                limit,
                refused = unlogged.0,
                "refusing new clients: limit reached (count since the last report)"
            );
            *unlogged = (0, Some(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admission(rate: Option<u32>, per_address: Option<usize>, max: usize) -> Arc<Admission> {
        Admission::new(&Limits {
            new_connections_per_second: rate,
            max_connections_per_address: per_address,
            max_connections: max,
            ..Limits::default()
        })
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_is_a_token_bucket_per_address_refilled_over_time() {
        let admission = admission(Some(5), None, 100);
        let burst: Vec<_> = (0..5).map(|_| admission.admit(CLIENT)).collect();
        assert!(
            burst.iter().all(Result::is_ok),
            "a full bucket takes a burst of 5"
        );
        assert_eq!(admission.admit(CLIENT).err(), Some(Refused::Rate));
        assert!(
            admission.admit(OTHER).is_ok(),
            "each address has its own bucket"
        );
        // One token comes back every 1/5 s, and not before.
        tokio::time::advance(Duration::from_millis(190)).await;
        assert_eq!(admission.admit(CLIENT).err(), Some(Refused::Rate));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(admission.admit(CLIENT).is_ok());
        assert_eq!(admission.admit(CLIENT).err(), Some(Refused::Rate));
        // A long quiet spell refills the bucket to its size, no further.
        tokio::time::advance(Duration::from_secs(60)).await;
        let again: Vec<_> = (0..5).map(|_| admission.admit(CLIENT)).collect();
        assert!(again.iter().all(Result::is_ok));
        assert_eq!(admission.admit(CLIENT).err(), Some(Refused::Rate));
        assert_eq!(admission.refused(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn open_connections_are_limited_per_address_and_per_listener_until_they_end() {
        let admission = admission(None, Some(2), 3);
        let first = admission.admit(CLIENT).expect("first");
        let _second = admission.admit(CLIENT).expect("second");
        assert_eq!(admission.admit(CLIENT).err(), Some(Refused::PerAddress));
        let _third = admission.admit(OTHER).expect("another address");
        assert_eq!(
            admission.admit(OTHER).err(),
            Some(Refused::MaxConnections),
            "the listener is full"
        );
        drop(first);
        assert!(
            admission.admit(CLIENT).is_ok(),
            "an ended connection frees its place"
        );
    }
}
