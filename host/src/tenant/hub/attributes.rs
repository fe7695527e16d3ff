//! The WIT `attributes` side of the registry: per-connection key/values kept in the host,
//! charged to the tenant's `attribute_bytes` budget.

use crate::sys::lock;
use crate::tenant::budget::BudgetKind;

use super::{
    ConnectionId, LocalHub, MAX_ATTRIBUTE_VALUE, MAX_NAME, MAX_PER_CONNECTION, valid_name,
};

/// Why an attribute could not be set (mirrors WIT `attributes.attribute-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Empty or longer than [`MAX_NAME`].
    #[error("attribute keys are 1 to {MAX_NAME} bytes")]
    BadKey,
    /// Longer than [`MAX_ATTRIBUTE_VALUE`].
    #[error("attribute values are at most {MAX_ATTRIBUTE_VALUE} bytes")]
    ValueTooLong,
    /// Already [`MAX_PER_CONNECTION`] attributes.
    #[error("a connection has at most {MAX_PER_CONNECTION} attributes")]
    TooMany,
}

/// Why a claim failed (mirrors WIT `attributes.claim-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Empty or longer than [`MAX_NAME`].
    #[error("attribute keys are 1 to {MAX_NAME} bytes")]
    BadKey,
    /// Longer than [`MAX_ATTRIBUTE_VALUE`].
    #[error("attribute values are at most {MAX_ATTRIBUTE_VALUE} bytes")]
    ValueTooLong,
    /// Already [`MAX_PER_CONNECTION`] attributes, or the budget is spent.
    #[error("a connection has at most {MAX_PER_CONNECTION} attributes")]
    TooMany,
    /// Another open connection holds the value.
    #[error("another connection holds this value")]
    Taken,
    /// The cluster could not be asked in time.
    #[error("the cluster could not be reached in time")]
    Unavailable,
}

impl From<AttributeError> for ClaimError {
    fn from(error: AttributeError) -> Self {
        match error {
            AttributeError::UnknownConnection => ClaimError::UnknownConnection,
            AttributeError::BadKey => ClaimError::BadKey,
            AttributeError::ValueTooLong => ClaimError::ValueTooLong,
            AttributeError::TooMany => ClaimError::TooMany,
        }
    }
}

/// What [`Attributes::claim_attribute`] returns: done at once on one node, waiting for NATS in
/// a cluster.
pub type ClaimFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClaimError>> + Send + 'a>>;

/// Per-connection key/values (WIT `attributes`).
pub trait Attributes: Send + Sync {
    /// Sets an attribute.
    fn set_attribute(
        &self,
        id: ConnectionId,
        key: &str,
        value: String,
    ) -> Result<(), AttributeError>;
    /// Reads an attribute (also while the connection is closing).
    fn attribute(&self, id: ConnectionId, key: &str) -> Option<String>;
    /// Removes an attribute.
    fn remove_attribute(&self, id: ConnectionId, key: &str) -> Option<String>;
    /// Every attribute of a connection.
    fn attributes(&self, id: ConnectionId) -> Vec<(String, String)>;
    /// Open connections whose attribute `key` is `value`.
    fn find_attribute(&self, key: &str, value: &str) -> Vec<ConnectionId>;
    /// Sets an attribute unless another open connection holds the value, atomically with
    /// respect to other claims.
    fn claim_attribute<'a>(
        &'a self,
        id: ConnectionId,
        key: &'a str,
        value: String,
    ) -> ClaimFuture<'a>;
}

impl LocalHub {
    /// The one-node claim: the check and the set under the tenant's claim lock.
    pub fn claim_here(&self, id: ConnectionId, key: &str, value: String) -> Result<(), ClaimError> {
        let _claiming = lock(&self.claiming);
        if self
            .find_attribute(key, &value)
            .iter()
            .any(|holder| *holder != id)
        {
            return Err(ClaimError::Taken);
        }
        Ok(self.set_attribute(id, key, value)?)
    }
}

impl Attributes for LocalHub {
    fn set_attribute(
        &self,
        id: ConnectionId,
        key: &str,
        value: String,
    ) -> Result<(), AttributeError> {
        if !valid_name(key) {
            return Err(AttributeError::BadKey);
        }
        if value.len() > MAX_ATTRIBUTE_VALUE {
            return Err(AttributeError::ValueTooLong);
        }
        let entries = self.read();
        let entry = entries
            .get(&id)
            .filter(|e| e.is_open())
            .ok_or(AttributeError::UnknownConnection)?;
        let mut attributes = lock(&entry.attributes);
        let old = attributes.get(key).map(|v| key.len() + v.len());
        if attributes.len() >= MAX_PER_CONNECTION && old.is_none() {
            return Err(AttributeError::TooMany);
        }
        let new = key.len() + value.len();
        let old = old.unwrap_or(0);
        let budget = self.budget(BudgetKind::AttributeBytes);
        if new > old {
            if !budget.try_charge(new - old) {
                return Err(AttributeError::TooMany);
            }
        } else {
            budget.release(old - new);
        }
        attributes.insert(key.to_string(), value);
        Ok(())
    }

    fn attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        let entries = self.read();
        let entry = entries.get(&id)?;
        lock(&entry.attributes).get(key).cloned()
    }

    fn remove_attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        let entries = self.read();
        let entry = entries.get(&id)?;
        let removed = lock(&entry.attributes).remove(key)?;
        self.budget(BudgetKind::AttributeBytes)
            .release(key.len() + removed.len());
        Some(removed)
    }

    fn attributes(&self, id: ConnectionId) -> Vec<(String, String)> {
        let entries = self.read();
        entries.get(&id).map_or_else(Vec::new, |entry| {
            lock(&entry.attributes)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn find_attribute(&self, key: &str, value: &str) -> Vec<ConnectionId> {
        self.read()
            .iter()
            .filter(|(_, e)| e.is_open())
            .filter(|(_, e)| lock(&e.attributes).get(key).is_some_and(|v| v == value))
            .map(|(id, _)| *id)
            .collect()
    }

    fn claim_attribute<'a>(
        &'a self,
        id: ConnectionId,
        key: &'a str,
        value: String,
    ) -> ClaimFuture<'a> {
        Box::pin(std::future::ready(self.claim_here(id, key, value)))
    }
}
