//! The registry of a clustered tenant: the node's own connections in a [`LocalHub`], the other
//! nodes' in the link's [`super::mirror::Mirror`], one WIT meaning over both.
//!
//! Local connections are served exactly as without a cluster. A call about a remote connection
//! is answered from the mirror (`peers`, `lookup`, `find`, `members`, `groups-of`,
//! `attributes.get`/`all`) or travels to the connection's node (`send`, `close`, and the remote
//! part of `broadcast` and `groups.send`), queued without waiting: the call returns what the
//! mirror knows (a remote `send` is `ok` once queued for its node, `unknown-connection` if no
//! node is known to have the id, `queue-full` if the outgoing queue is full). Changes to local
//! connections are announced to the others as they are made. Timers and per-connection
//! `stats` are node-local: a remote id is `unknown-connection` / `none` there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::sys::lock;
use crate::tenant::hub::{
    AttributeError, Attributes, ClaimError, ClaimFuture, ConnectionId, ConnectionStats,
    Connections, GroupError, Groups, LocalHub, MAX_ATTRIBUTE_VALUE, MAX_NAME, Mailbox, PeerInfo,
    Registry, SendError, Stats, TimerError, TimerId, Timers, counters::ListenerStats,
};

use super::Cluster;
use super::claims::Held;
use super::link::Link;
use super::wire::{Change, FrameKind, WirePeer};

/// A tenant's registry spanning the nodes of a cluster.
pub struct ClusterHub {
    local: Arc<LocalHub>,
    link: Arc<Link>,
    /// The claims this node holds, per connection and attribute key.
    held: Mutex<HashMap<ConnectionId, HashMap<String, Held>>>,
}

impl ClusterHub {
    /// The registry of tenant `name` on this node, its own connections in `local`; starts the
    /// tenant's link on the current tokio runtime.
    pub fn new(cluster: Arc<Cluster>, name: Arc<str>, local: LocalHub) -> ClusterHub {
        let local = Arc::new(local);
        let link = Link::start(cluster, name, local.clone());
        ClusterHub {
            local,
            link,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `run` call the plugin's `on-close` for the connections of a node that vanished
    /// (the listener sets it once it exists).
    pub fn on_departures(&self, run: super::link::Departures) {
        let _ = self.link.departures.set(run);
    }

    /// Makes `hook` serve versions rolled out to the tenant (the deployer sets it when it starts
    /// the listener).
    pub fn on_deploy(&self, hook: super::link::DeployHook) {
        let _ = self.link.deploys.set(hook);
    }

    /// Gives up connection `id`'s claim of `key`, if it has one.
    fn release(&self, id: ConnectionId, key: &str) {
        let held = lock(&self.held)
            .get_mut(&id)
            .and_then(|claims| claims.remove(key));
        if let Some(held) = held {
            self.link.release(held);
        }
    }

    /// Whether `id` is an open connection anywhere this node can see.
    fn is_open(&self, id: ConnectionId) -> bool {
        self.local.lookup(id).is_some() || self.link.mirror().get(id).is_some()
    }

    fn announce(&self, change: Change) {
        self.link.change(|| (Some(change), ()));
    }
}

impl Drop for ClusterHub {
    fn drop(&mut self) {
        self.link.stop.cancel();
    }
}

impl Connections for ClusterHub {
    fn send(&self, to: ConnectionId, frame: Bytes) -> Result<(), SendError> {
        match self.local.send(to, frame.clone()) {
            Err(SendError::UnknownConnection) => {}
            done => return done,
        }
        let node = self
            .link
            .mirror()
            .node_of(to)
            .map(str::to_string)
            .ok_or(SendError::UnknownConnection)?;
        let message = self.link.frame(FrameKind::Send, to, "", frame);
        if self
            .link
            .send_frame(self.link.subjects.node(&node), message)
        {
            Ok(())
        } else {
            Err(SendError::QueueFull)
        }
    }

    fn broadcast(&self, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.local.max_frame() {
            return 0;
        }
        let here = self.local.broadcast(frame.clone(), except);
        let remote = {
            let mirror = self.link.mirror();
            mirror.all().filter(|r| Some(r.peer.id) != except).count()
        };
        if remote == 0 {
            return here;
        }
        let message = self
            .link
            .frame(FrameKind::Broadcast, except.unwrap_or(0), "", frame);
        if !self.link.send_frame(self.link.subjects.all(), message) {
            return here;
        }
        here.saturating_add(u32::try_from(remote).unwrap_or(u32::MAX))
    }

    fn close(&self, id: ConnectionId) -> bool {
        if self.local.close(id) {
            return true;
        }
        let Some(node) = self.link.mirror().node_of(id).map(str::to_string) else {
            return false;
        };
        let message = self.link.frame(FrameKind::Close, id, "", Bytes::new());
        self.link
            .send_frame(self.link.subjects.node(&node), message)
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let mut peers = self.local.peers();
        peers.extend(self.link.mirror().peers(&self.link.name));
        peers
    }

    fn lookup(&self, id: ConnectionId) -> Option<PeerInfo> {
        self.local.lookup(id).or_else(|| {
            self.link
                .mirror()
                .get(id)
                .map(|r| r.peer.to_peer(&self.link.name))
        })
    }

    fn max_frame(&self) -> usize {
        self.local.max_frame()
    }
}

impl Attributes for ClusterHub {
    fn set_attribute(
        &self,
        id: ConnectionId,
        key: &str,
        value: String,
    ) -> Result<(), AttributeError> {
        // Only a connection's own node changes its attributes: that node is where they live.
        let result = self.link.change(|| {
            let result = self.local.set_attribute(id, key, value.clone());
            let change = result.is_ok().then(|| Change::Attribute {
                id,
                key: key.to_string(),
                value: Some(value),
            });
            (change, result)
        });
        // A new value is not the claimed one any more (a claim records its own after this).
        if result.is_ok() {
            self.release(id, key);
        }
        result
    }

    fn attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        self.local
            .attribute(id, key)
            .or_else(|| {
                self.link
                    .mirror()
                    .get(id)
                    .and_then(|r| r.attributes.get(key).cloned())
            })
            .or_else(|| {
                lock(&self.link.departed)
                    .get(&id)
                    .and_then(|r| r.attributes.get(key).cloned())
            })
    }

    fn remove_attribute(&self, id: ConnectionId, key: &str) -> Option<String> {
        let removed = self.link.change(|| {
            let removed = self.local.remove_attribute(id, key);
            let change = removed.is_some().then(|| Change::Attribute {
                id,
                key: key.to_string(),
                value: None,
            });
            (change, removed)
        });
        if removed.is_some() {
            self.release(id, key);
        }
        removed
    }

    fn attributes(&self, id: ConnectionId) -> Vec<(String, String)> {
        let pairs = |r: &super::mirror::Remote| -> Vec<(String, String)> {
            r.attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if let Some(remote) = self.link.mirror().get(id) {
            return pairs(remote);
        }
        if let Some(remote) = lock(&self.link.departed).get(&id) {
            return pairs(remote);
        }
        self.local.attributes(id)
    }

    fn claim_attribute<'a>(
        &'a self,
        id: ConnectionId,
        key: &'a str,
        value: String,
    ) -> ClaimFuture<'a> {
        Box::pin(async move {
            if key.is_empty() || key.len() > MAX_NAME {
                return Err(ClaimError::BadKey);
            }
            if value.len() > MAX_ATTRIBUTE_VALUE {
                return Err(ClaimError::ValueTooLong);
            }
            if self.local.lookup(id).is_none() {
                return Err(ClaimError::UnknownConnection);
            }
            if self.local.attribute(id, key).as_deref() == Some(value.as_str())
                && lock(&self.held)
                    .get(&id)
                    .is_some_and(|c| c.contains_key(key))
            {
                return Ok(());
            }
            // Held by someone this node can see: no need to ask NATS.
            if self
                .find_attribute(key, &value)
                .iter()
                .any(|holder| *holder != id)
            {
                return Err(ClaimError::Taken);
            }
            // Just started, or NATS is away: wait for it within the claim's bound.
            let mut state = self.link.cluster.connection_state();
            let connected = state.wait_for(|connected| *connected);
            if !matches!(
                tokio::time::timeout(super::claims::CLAIM_TIMEOUT, connected).await,
                Ok(Ok(_))
            ) {
                return Err(ClaimError::Unavailable);
            }
            let started = std::time::Instant::now();
            let outcome = self
                .link
                .cluster
                .claims
                .claim(&self.link.name, key, &value, id, |holder| {
                    self.is_open(holder)
                })
                .await;
            self.link
                .metrics
                .claim_duration
                .observe(started.elapsed().as_secs_f64());
            let held = outcome?;
            match self.set_attribute(id, key, value) {
                Ok(()) => {
                    // The connection may have closed while NATS answered: then give it back.
                    if self.local.lookup(id).is_some() {
                        lock(&self.held)
                            .entry(id)
                            .or_default()
                            .insert(key.to_string(), held);
                    } else {
                        self.link.release(held);
                    }
                    Ok(())
                }
                Err(err) => {
                    self.link.release(held);
                    Err(err.into())
                }
            }
        })
    }

    fn find_attribute(&self, key: &str, value: &str) -> Vec<ConnectionId> {
        let mut found = self.local.find_attribute(key, value);
        found.extend(
            self.link
                .mirror()
                .all()
                .filter(|r| r.attributes.get(key).is_some_and(|v| v == value))
                .map(|r| r.peer.id),
        );
        found
    }
}

impl Groups for ClusterHub {
    fn join(&self, id: ConnectionId, group: &str) -> Result<(), GroupError> {
        // Subscribed (queued) before the join is announced, so a node that hears of the member
        // and sends to the group finds this node listening.
        self.link.want_group(group);
        let result = self.link.change(|| {
            let result = self.local.join(id, group);
            let change = result.is_ok().then(|| Change::Join {
                id,
                group: group.to_string(),
            });
            (change, result)
        });
        if result.is_err() {
            self.link.maybe_unwant_group(group);
        }
        result
    }

    fn leave(&self, id: ConnectionId, group: &str) -> bool {
        let left = self.link.change(|| {
            let left = self.local.leave(id, group);
            let change = left.then(|| Change::Leave {
                id,
                group: group.to_string(),
            });
            (change, left)
        });
        if left {
            self.link.maybe_unwant_group(group);
        }
        left
    }

    fn members(&self, group: &str) -> Vec<ConnectionId> {
        let mut members = self.local.members(group);
        members.extend(self.link.mirror().members(group));
        members
    }

    fn groups_of(&self, id: ConnectionId) -> Vec<String> {
        if self.local.lookup(id).is_some() {
            return self.local.groups_of(id);
        }
        self.link
            .mirror()
            .get(id)
            .map_or_else(Vec::new, |r| r.groups.iter().cloned().collect())
    }

    fn group_send(&self, group: &str, frame: Bytes, except: Option<ConnectionId>) -> u32 {
        if frame.len() > self.local.max_frame() {
            return 0;
        }
        let here = self.local.group_send(group, frame.clone(), except);
        let remote = self
            .link
            .mirror()
            .members(group)
            .filter(|id| Some(*id) != except)
            .count();
        if remote == 0 {
            return here;
        }
        let message = self
            .link
            .frame(FrameKind::Group, except.unwrap_or(0), group, frame);
        if !self
            .link
            .send_frame(self.link.subjects.group(group), message)
        {
            return here;
        }
        here.saturating_add(u32::try_from(remote).unwrap_or(u32::MAX))
    }
}

impl Stats for ClusterHub {
    /// `connected` counts the whole cluster's open connections of the tenant; every other
    /// figure is this node's.
    fn listener_stats(&self) -> ListenerStats {
        let mut stats = self.local.listener_stats();
        let remote = self.link.mirror().count();
        stats.connected = stats
            .connected
            .saturating_add(u32::try_from(remote).unwrap_or(u32::MAX));
        stats
    }

    fn connection_stats(&self, id: ConnectionId) -> Option<ConnectionStats> {
        self.local.connection_stats(id)
    }

    fn all_connection_stats(&self) -> Vec<ConnectionStats> {
        self.local.all_connection_stats()
    }
}

impl Timers for ClusterHub {
    fn start_timer(
        &self,
        id: ConnectionId,
        delay: Duration,
        interval: Option<Duration>,
    ) -> Result<TimerId, TimerError> {
        self.local.start_timer(id, delay, interval)
    }

    fn cancel_timer(&self, timer: TimerId) -> bool {
        self.local.cancel_timer(timer)
    }
}

impl Registry for ClusterHub {
    fn register(&self, peer: PeerInfo) -> Mailbox {
        let wire = WirePeer::from_peer(&peer);
        self.link
            .change(|| (Some(Change::Open { peer: wire }), self.local.register(peer)))
    }

    fn begin_close(&self, id: ConnectionId) {
        let groups = self.local.groups_of(id);
        self.link.change(|| {
            let open = self.local.lookup(id).is_some();
            self.local.begin_close(id);
            (open.then_some(Change::Close { id }), ())
        });
        for group in groups {
            self.link.maybe_unwant_group(&group);
        }
        let held = lock(&self.held).remove(&id);
        for (_, held) in held.into_iter().flatten() {
            self.link.release(held);
        }
    }

    fn unregister(&self, id: ConnectionId) {
        let was_open = self.local.lookup(id).is_some();
        self.local.unregister(id);
        if was_open {
            self.announce(Change::Close { id });
        }
    }

    fn timer_done(&self, id: ConnectionId, timer: TimerId) {
        self.local.timer_done(id, timer);
    }
}
