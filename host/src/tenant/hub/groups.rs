//! The WIT `groups` side of the registry: named rooms, kept apart from the connection map so
//! a group send does not scan everyone; names are charged to the tenant's `group_bytes` budget.

use std::collections::HashSet;

use bytes::Bytes;

use crate::sys::lock;
use crate::tenant::budget::BudgetKind;

use super::{ConnectionId, LocalHub, MAX_NAME, MAX_PER_CONNECTION, valid_name};

/// Why a connection could not join a group (mirrors WIT `groups.group-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No open connection has this id.
    #[error("no open connection has this id")]
    UnknownConnection,
    /// Empty or longer than [`MAX_NAME`].
    #[error("group names are 1 to {MAX_NAME} bytes")]
    BadName,
    /// Already in [`MAX_PER_CONNECTION`] groups.
    #[error("a connection is in at most {MAX_PER_CONNECTION} groups")]
    TooMany,
}

/// Named rooms of connections (WIT `groups`).
pub trait Groups: Send + Sync {
    /// Adds a connection to a group.
    fn join(&self, id: ConnectionId, group: &str) -> Result<(), GroupError>;
    /// Removes a connection from a group.
    fn leave(&self, id: ConnectionId, group: &str) -> bool;
    /// A group's members.
    fn members(&self, group: &str) -> Vec<ConnectionId>;
    /// A connection's groups.
    fn groups_of(&self, id: ConnectionId) -> Vec<String>;
    /// Queues a frame for a group's members but `except`.
    fn group_send(&self, group: &str, frame: Bytes, except: Option<ConnectionId>) -> u32;
}

impl Groups for LocalHub {
    fn join(&self, id: ConnectionId, group: &str) -> Result<(), GroupError> {
        if !valid_name(group) {
            return Err(GroupError::BadName);
        }
        {
            let entries = self.read();
            let entry = entries
                .get(&id)
                .filter(|e| e.is_open())
                .ok_or(GroupError::UnknownConnection)?;
            let mut mine = lock(&entry.groups);
            if !mine.contains(group) {
                if mine.len() >= MAX_PER_CONNECTION
                    || !self.budget(BudgetKind::GroupBytes).try_charge(group.len())
                {
                    return Err(GroupError::TooMany);
                }
                mine.insert(group.to_string());
            }
        }
        self.groups_write()
            .entry(group.to_string())
            .or_default()
            .insert(id);
        Ok(())
    }

    fn leave(&self, id: ConnectionId, group: &str) -> bool {
        let was_member = {
            let entries = self.read();
            entries
                .get(&id)
                .is_some_and(|e| lock(&e.groups).remove(group))
        };
        if was_member {
            let names = HashSet::from([group.to_string()]);
            self.remove_from_groups(id, &names);
            self.release_groups(&names);
        }
        was_member
    }

    fn members(&self, group: &str) -> Vec<ConnectionId> {
        self.groups_read()
            .get(group)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    fn groups_of(&self, id: ConnectionId) -> Vec<String> {
        self.read()
            .get(&id)
            .map(|e| lock(&e.groups).iter().cloned().collect())
            .unwrap_or_default()
    }

    fn group_send(&self, group: &str, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.max_frame {
            return 0;
        }
        let members = self.members(group);
        let entries = self.read();
        let delivered = members
            .iter()
            .filter(|id| Some(**id) != except)
            .filter_map(|id| entries.get(id))
            .filter(|entry| entry.queue(frame.clone(), &self.full).is_ok())
            .count();
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }
}
