//! Cluster-wide unique attribute values (`attributes.claim`), decided by a NATS JetStream
//! key-value bucket: a value is held by whoever created its key first.
//!
//! The key is a digest of (tenant, attribute key, value), so no tenant can name another's
//! claims and any value fits a key. Its content is the holder's connection id. `create` is the
//! atomic step: it fails when the key exists. An existing key whose holder is no longer open
//! anywhere this node can see (it closed and its release was lost, or its node died) is taken
//! over with a compare-and-set on its revision — but only once the key is older than the
//! presence timeout, so a holder on a node this one has not heard from yet is never mistaken
//! for a stale one. Releases (the attribute changed, was removed, or its connection closed)
//! delete the key only at the revision this node wrote, so a release arriving late never
//! deletes a newer holder's claim.

use std::time::Duration;

use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::tenant::hub::{ClaimError, ConnectionId};

use super::mirror::PRESENCE_TIMEOUT;

/// How long a claim may wait for NATS before it answers `unavailable`.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// The claims bucket of one cluster.
pub struct Claims {
    client: async_nats::Client,
    bucket: String,
    store: OnceCell<kv::Store>,
}

/// A claim this node holds: the bucket key and the revision it wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The bucket key.
    pub key: String,
    /// The revision this node wrote.
    pub revision: u64,
}

impl Claims {
    /// The claims of the cluster whose subjects start with `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str) -> Claims {
        Claims {
            client,
            bucket: super::buckets::name(prefix, "claims"),
            store: OnceCell::new(),
        }
    }

    /// The bucket, created on first use (and looked up again after a failure).
    async fn store(&self) -> Result<&kv::Store, ClaimError> {
        self.store
            .get_or_try_init(|| async {
                super::buckets::key_value(
                    &self.client,
                    &self.bucket,
                    "pier: who holds which claimed attribute value",
                    1024,
                )
                .await
                .map_err(|err| {
                    warn!("cluster: the claims bucket is unavailable: {err:#}");
                    ClaimError::Unavailable
                })
            })
            .await
    }

    /// The bucket key of `tenant`'s claim of `key` = `value`.
    pub fn key(tenant: &str, key: &str, value: &str) -> String {
        let mut digest = Sha256::new();
        for part in [tenant, key, value] {
            digest.update(part.len().to_be_bytes());
            digest.update(part.as_bytes());
        }
        hex::encode(&digest.finalize()[..20])
    }

    /// Claims `key` = `value` of `tenant` for connection `id`; `open` tells whether a holder
    /// is an open connection this node knows of. Waits at most [`CLAIM_TIMEOUT`].
    pub async fn claim(
        &self,
        tenant: &str,
        key: &str,
        value: &str,
        id: ConnectionId,
        open: impl Fn(ConnectionId) -> bool,
    ) -> Result<Held, ClaimError> {
        let bucket_key = Self::key(tenant, key, value);
        let attempt = async {
            let store = self.store().await?;
            let mine = bytes::Bytes::from(id.to_string());
            match store.create(&bucket_key, mine.clone()).await {
                Ok(revision) => return Ok(revision),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => {
                    debug!("cluster: claim create failed: {err}");
                    return Err(ClaimError::Unavailable);
                }
            }
            let entry = store
                .entry(&bucket_key)
                .await
                .map_err(|_| ClaimError::Unavailable)?;
            let Some(entry) = entry else {
                // Deleted in between: one more try at creating it.
                return store
                    .create(&bucket_key, mine)
                    .await
                    .map_err(|err| match err.kind() {
                        kv::CreateErrorKind::AlreadyExists => ClaimError::Taken,
                        _ => ClaimError::Unavailable,
                    });
            };
            let holder: Option<ConnectionId> = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.parse().ok());
            if holder == Some(id) {
                return Ok(entry.revision);
            }
            let age = time::OffsetDateTime::now_utc() - entry.created;
            let stale = holder.is_none_or(|holder| !open(holder))
                && age
                    > time::Duration::try_from(PRESENCE_TIMEOUT * 2).unwrap_or(time::Duration::MAX);
            if !stale {
                return Err(ClaimError::Taken);
            }
            store
                .update(&bucket_key, mine, entry.revision)
                .await
                .map_err(|_| ClaimError::Taken)
        };
        match tokio::time::timeout(CLAIM_TIMEOUT, attempt).await {
            Ok(Ok(revision)) => Ok(Held {
                key: bucket_key,
                revision,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ClaimError::Unavailable),
        }
    }

    /// Gives a claim up, if it is still the one this node wrote.
    pub async fn release(&self, held: Held) {
        let Ok(store) = self.store().await else {
            return;
        };
        let released = tokio::time::timeout(
            CLAIM_TIMEOUT,
            store.delete_expect_revision(&held.key, Some(held.revision)),
        )
        .await;
        if let Ok(Err(err)) = released {
            debug!("cluster: claim release: {err}");
        }
    }
}
