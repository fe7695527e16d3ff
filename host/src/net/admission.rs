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
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::Limits;

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

/// Holds a connection's place until it ends.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    address: Option<(Arc<Admission>, IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((admission, ip)) = self.address.take() {
            let mut addresses = admission
                .addresses
                .lock()
                .unwrap_or_else(|e| e.into_inner());
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
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.refuse(Refused::MaxConnections))?;
        if self.per_address.is_none() && self.rate.is_none() {
            return Ok(Admitted {
                _permit: permit,
                address: None,
            });
        }
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
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
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut unlogged = self.unlogged.lock().unwrap_or_else(|e| e.into_inner());
        unlogged.0 += 1;
        let now = Instant::now();
        if unlogged
            .1
            .is_none_or(|last| now.duration_since(last).as_secs() >= 1)
        {
            tracing::warn!(
                limit = why.name(),
                refused = unlogged.0,
                "refusing new clients: limit reached (count since the last report)"
            );
            *unlogged = (0, Some(now));
        }
        why
    }
}
