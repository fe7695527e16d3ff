//! What operators look at: the admin HTTP endpoint and the Prometheus metrics behind it.
//!
//! - [`admin`]: `/metrics`, `/healthz`, `/plugins`, `/connections`, `POST /reload`.
//! - [`metrics`]: metric families and the handles listeners, plugin versions and upstream
//!   pools update (label values are strings their callers choose).

pub mod admin;
pub mod metrics;
