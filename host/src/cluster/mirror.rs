//! What one node knows about the other nodes of a tenant: their open connections, with
//! attributes and groups, rebuilt from presence messages ([`super::wire::Presence`]).
//!
//! A node's view is replaced whole by its snapshot and then kept up to date by its changes,
//! in order (NATS keeps one publisher's messages in order). A gap in a node's sequence makes
//! the view of it untrusted until the next snapshot ([`Mirror::apply`] says when to ask for
//! one). A node not heard from for [`PRESENCE_TIMEOUT`] is forgotten: its connections leave
//! `peers`, `members` and `find` on every other node within that bound.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tenant::hub::{ConnectionId, PeerInfo};

use super::wire::{Change, Presence, WireConnection, WirePeer};

/// How long a node may stay silent (no heartbeat, no change) before the others forget it.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a node whose view is untrusted is asked again for a snapshot.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What to do after applying a presence message.
#[derive(Debug, PartialEq, Eq)]
pub enum Followup {
    /// Publish a snapshot of this node (someone said hello or asked for a resync).
    SendSnapshot,
    /// Ask the named node for a snapshot (the view of it missed a change).
    AskSnapshot(String),
}

/// One remote connection.
#[derive(Debug)]
pub struct Remote {
    /// Who it is.
    pub peer: WirePeer,
    /// Its attributes.
    pub attributes: HashMap<String, String>,
    /// Its groups.
    pub groups: HashSet<String>,
}

/// What is known of one remote node.
struct NodeView {
    incarnation: u32,
    /// The last sequence number applied; `None` until a snapshot arrived.
    seq: Option<u64>,
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
    last_heard: Instant,
    connections: HashMap<ConnectionId, Remote>,
}

/// Every other node of the tenant.
#[derive(Default)]
pub struct Mirror {
    nodes: HashMap<String, NodeView>,
    /// Connection id → the node it is on.
    owner: HashMap<ConnectionId, String>,
    /// Group → its remote members.
    groups: HashMap<String, HashSet<ConnectionId>>,
}

impl Mirror {
    /// Applies a message from another node and says what to do next; `own` is this node's
    /// name (its own messages, which NATS does not echo anyway, are ignored).
    pub fn apply(&mut self, own: &str, message: Presence, now: Instant) -> Vec<Followup> {
        if message.node == own {
            return Vec::new();
        }
        let node = message.node.clone();
        match &message.change {
            Change::Hello => {
                // A new incarnation of that node (or one back from a NATS outage): what we knew
                // of it is stale. Its snapshot follows its hello.
                self.forget(&node);
                self.view(&message, now);
                return vec![Followup::SendSnapshot];
            }
            Change::Goodbye => {
                self.forget(&node);
                return Vec::new();
            }
            _ => {}
        }
        if self
            .nodes
            .get(&node)
            .is_some_and(|v| v.incarnation != message.incarnation)
        {
            self.forget(&node);
        }
        self.view(&message, now);
        let mut followups = Vec::new();
        if let Change::Resync { of } = &message.change
            && of == own
        {
            followups.push(Followup::SendSnapshot);
        }
        let Some(view) = self.nodes.get_mut(&node) else {
            return followups;
        };
        if let Change::Snapshot {
            part: 0,
            connections,
        } = message.change
        {
            self.replace(&node, message.seq, connections);
            return followups;
        }
        if view.seq.map(|s| s + 1) == Some(message.seq) {
            view.seq = Some(message.seq);
            self.change(&node, message.change);
        } else {
            // Never had a snapshot, or missed a change: untrusted until the next snapshot,
            // asked for at most once a second (a busy node sends many changes meanwhile).
            view.seq = None;
            if view
                .asked
                .is_none_or(|at| now.duration_since(at) >= RESYNC_INTERVAL)
            {
                view.asked = Some(now);
                followups.push(Followup::AskSnapshot(node));
            }
        }
        followups
    }

    fn view(&mut self, message: &Presence, now: Instant) {
        let view = self
            .nodes
            .entry(message.node.clone())
            .or_insert_with(|| NodeView {
                incarnation: message.incarnation,
                seq: None,
                asked: None,
                last_heard: now,
                connections: HashMap::new(),
            });
        view.last_heard = now;
    }

    fn replace(&mut self, node: &str, seq: u64, connections: Vec<WireConnection>) {
        let _stale = self.clear_connections(node);
        if let Some(view) = self.nodes.get_mut(node) {
            view.seq = Some(seq);
            view.asked = None;
        }
        self.add(node, connections);
    }

    fn add(&mut self, node: &str, connections: Vec<WireConnection>) {
        let Some(view) = self.nodes.get_mut(node) else {
            return;
        };
        for conn in connections {
            let id = conn.peer.id;
            for group in &conn.groups {
                self.groups.entry(group.clone()).or_default().insert(id);
            }
            self.owner.insert(id, node.to_string());
            view.connections.insert(
                id,
                Remote {
                    peer: conn.peer,
                    attributes: conn.attributes,
                    groups: conn.groups.into_iter().collect(),
                },
            );
        }
    }

    fn change(&mut self, node: &str, change: Change) {
        if let Change::Snapshot { connections, .. } = change {
            return self.add(node, connections);
        }
        let Some(view) = self.nodes.get_mut(node) else {
            return;
        };
        match change {
            Change::Open { peer } => {
                self.owner.insert(peer.id, node.to_string());
                view.connections.entry(peer.id).or_insert_with(|| Remote {
                    peer,
                    attributes: HashMap::new(),
                    groups: HashSet::new(),
                });
            }
            Change::Close { id } => {
                if let Some(remote) = view.connections.remove(&id) {
                    self.owner.remove(&id);
                    for group in remote.groups {
                        remove_member(&mut self.groups, &group, id);
                    }
                }
            }
            Change::Attribute { id, key, value } => {
                if let Some(remote) = view.connections.get_mut(&id) {
                    match value {
                        Some(value) => {
                            remote.attributes.insert(key, value);
                        }
                        None => {
                            remote.attributes.remove(&key);
                        }
                    }
                }
            }
            Change::Join { id, group } => {
                if let Some(remote) = view.connections.get_mut(&id) {
                    remote.groups.insert(group.clone());
                    self.groups.entry(group).or_default().insert(id);
                }
            }
            Change::Leave { id, group } => {
                if let Some(remote) = view.connections.get_mut(&id) {
                    remote.groups.remove(&group);
                    remove_member(&mut self.groups, &group, id);
                }
            }
            Change::Heartbeat { .. }
            | Change::Hello
            | Change::Resync { .. }
            | Change::Snapshot { .. }
            | Change::Goodbye => {}
        }
    }

    /// Forgets nodes silent for longer than [`PRESENCE_TIMEOUT`]: their names, each with the
    /// connections it had (gone without their own node saying so).
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Vec<Remote>)> {
        let silent: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, v)| now.duration_since(v.last_heard) > PRESENCE_TIMEOUT)
            .map(|(name, _)| name.clone())
            .collect();
        silent
            .into_iter()
            .map(|name| {
                let gone = self.forget(&name);
                (name, gone)
            })
            .collect()
    }

    /// Forgets every node (this node lost NATS: nothing it knows of the others is current).
    pub fn clear(&mut self) {
        *self = Mirror::default();
    }

    fn clear_connections(&mut self, node: &str) -> Vec<Remote> {
        let Some(view) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for (id, remote) in view.connections.drain() {
            self.owner.remove(&id);
            for group in &remote.groups {
                remove_member(&mut self.groups, group, id);
            }
            gone.push(remote);
        }
        gone
    }

    fn forget(&mut self, node: &str) -> Vec<Remote> {
        let gone = self.clear_connections(node);
        self.nodes.remove(node);
        gone
    }

    /// The node connection `id` is on, if it is a known remote connection.
    pub fn node_of(&self, id: ConnectionId) -> Option<&str> {
        self.owner.get(&id).map(String::as_str)
    }

    /// A remote connection.
    pub fn get(&self, id: ConnectionId) -> Option<&Remote> {
        let node = self.owner.get(&id)?;
        self.nodes.get(node)?.connections.get(&id)
    }

    /// Every remote connection.
    pub fn all(&self) -> impl Iterator<Item = &Remote> {
        self.nodes.values().flat_map(|v| v.connections.values())
    }

    /// How many remote connections there are.
    pub fn count(&self) -> usize {
        self.owner.len()
    }

    /// A group's remote members.
    pub fn members(&self, group: &str) -> impl Iterator<Item = ConnectionId> + '_ {
        self.groups.get(group).into_iter().flatten().copied()
    }

    /// Whether `own` comes first by name among the nodes known now and itself: the one node
    /// that speaks for a node that vanished.
    pub fn first_by_name(&self, own: &str) -> bool {
        self.nodes.keys().all(|other| own < other.as_str())
    }

    /// How many other members are known now.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Peers of remote connections, for `peers`.
    pub fn peers(&self, listener: &Arc<str>) -> Vec<PeerInfo> {
        self.all().map(|r| r.peer.to_peer(listener)).collect()
    }
}

fn remove_member(
    groups: &mut HashMap<String, HashSet<ConnectionId>>,
    group: &str,
    id: ConnectionId,
) {
    if let Some(members) = groups.get_mut(group) {
        members.remove(&id);
        if members.is_empty() {
            groups.remove(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: ConnectionId) -> WirePeer {
        WirePeer {
            id,
            remote: "127.0.0.1:1".into(),
            local: "127.0.0.1:2".into(),
            at: 0,
            tls: None,
        }
    }

    fn message(seq: u64, change: Change) -> Presence {
        Presence {
            node: "b".into(),
            incarnation: 1,
            seq,
            change,
        }
    }

    fn snapshot(connections: Vec<WireConnection>) -> Change {
        Change::Snapshot {
            part: 0,
            connections,
        }
    }

    fn ask() -> Vec<Followup> {
        vec![Followup::AskSnapshot("b".into())]
    }

    #[test]
    fn a_snapshot_then_changes_in_order_build_the_view() {
        let mut mirror = Mirror::default();
        let now = Instant::now();
        assert_eq!(
            mirror.apply("a", message(1, Change::Open { peer: peer(7) }), now),
            ask()
        );
        let known = WireConnection {
            peer: peer(7),
            attributes: HashMap::from([("name".into(), "ann".into())]),
            groups: vec!["chat".into()],
        };
        assert!(
            mirror
                .apply("a", message(1, snapshot(vec![known])), now)
                .is_empty()
        );
        assert_eq!(mirror.node_of(7), Some("b"));
        assert_eq!(mirror.members("chat").collect::<Vec<_>>(), vec![7]);
        let join = Change::Join {
            id: 7,
            group: "dev".into(),
        };
        assert!(mirror.apply("a", message(2, join), now).is_empty());
        assert_eq!(mirror.members("dev").collect::<Vec<_>>(), vec![7]);
        // Message 3 lost: the view is untrusted until a snapshot, asked for once a second.
        assert_eq!(
            mirror.apply("a", message(4, Change::Close { id: 7 }), now),
            ask()
        );
        assert!(
            mirror
                .apply("a", message(5, Change::Close { id: 7 }), now)
                .is_empty()
        );
        let later = now + RESYNC_INTERVAL;
        assert_eq!(
            mirror.apply("a", message(6, Change::Close { id: 7 }), later),
            ask()
        );
        assert!(
            mirror
                .apply("a", message(6, snapshot(vec![])), later)
                .is_empty()
        );
        assert_eq!(mirror.node_of(7), None);
        assert_eq!(mirror.members("chat").count(), 0);
        let heartbeat = Change::Heartbeat { open: 0 };
        assert!(mirror.apply("a", message(7, heartbeat), later).is_empty());
    }

    #[test]
    fn a_silent_node_is_forgotten_after_the_timeout_and_a_hello_resets_it() {
        let mut mirror = Mirror::default();
        let now = Instant::now();
        let known = WireConnection {
            peer: peer(3),
            attributes: HashMap::new(),
            groups: vec!["g".into()],
        };
        mirror.apply("a", message(1, snapshot(vec![known])), now);
        assert!(mirror.expire(now + PRESENCE_TIMEOUT / 2).is_empty());
        assert_eq!(mirror.count(), 1);
        let gone = mirror.expire(now + PRESENCE_TIMEOUT + Duration::from_millis(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "b");
        assert_eq!(
            gone[0].1.iter().map(|r| r.peer.id).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(mirror.count(), 0);
        assert_eq!(mirror.members("g").count(), 0);
        assert_eq!(
            mirror.apply("a", message(1, Change::Hello), now),
            vec![Followup::SendSnapshot]
        );
        let resync = Change::Resync { of: "a".into() };
        assert_eq!(
            mirror.apply("a", message(2, resync), now),
            vec![Followup::SendSnapshot, Followup::AskSnapshot("b".into())]
        );
    }
}
