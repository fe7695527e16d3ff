//! One tenant's traffic with the other nodes: the bounded outgoing queue and the tasks that
//! publish it, receive what the others send and keep the tenant's subscriptions.
//!
//! Worker threads never wait for NATS. A cross-node send, a presence change or a broadcast is
//! put on the tenant's outgoing queue ([`Link::enqueue`]: at most [`OUT_MESSAGES`] messages and
//! [`OUT_BYTES`] bytes; beyond that it is dropped and counted) and the publisher task hands it to
//! the NATS client. The receiver task applies presence to the [`Mirror`], delivers frames to
//! the node's own connections through the [`LocalHub`], heartbeats, forgets silent nodes and
//! says hello again whenever the NATS connection comes back.
//!
//! A group's subject is subscribed by the publisher task, in queue order, before the `join`
//! that made it wanted is announced, so a node that learns of the member and sends to the group
//! reaches a subscription that exists. Once a tick, the wanted groups are reconciled with the
//! subscriptions (groups whose last local member left are unsubscribed), which also repairs a
//! subscribe request the full queue dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ops::metrics::ClusterMetrics;
use crate::sys::lock;
use crate::tenant::hub::{Attributes, ConnectionId, Connections, Groups, LocalHub, Stats};

use super::Cluster;
use super::claims::Held;
use super::mirror::{Followup, Mirror, Remote};
use super::wire::{Change, FrameKind, FrameMessage, Presence, Subjects, WireConnection, WirePeer};

/// Most messages waiting to be published, per tenant.
pub const OUT_MESSAGES: usize = 8192;
/// Most bytes waiting to be published, per tenant.
pub const OUT_BYTES: usize = 16 * 1024 * 1024;
/// How often a node says it is alive (and reconciles its group subscriptions).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The size a snapshot part aims at: far below NATS's default 1 MiB `max_payload`.
const SNAPSHOT_PART_BYTES: usize = 256 * 1024;

/// What the publisher task does next.
enum Outgoing {
    /// Publish `payload` on `subject`.
    Publish { subject: String, payload: Bytes },
    /// Subscribe to a group's subject (a local connection joined it).
    Subscribe(String),
    /// Drop a group's subscription if no local connection is in it any more.
    Unsubscribe(String),
    /// Give a claim up.
    Release(Held),
    /// The tenant is gone: everything before this was published.
    Stop,
}

/// What one clustered tenant shares between its hub (worker threads) and its tasks.
pub struct Link {
    /// The tenant.
    pub name: Arc<str>,
    /// The process's NATS connection.
    pub cluster: Arc<Cluster>,
    /// Who this link is to the others: the node's name, with `#N` for the N-th registry of
    /// the tenant in this process (a restarted listener runs beside the one it replaces until
    /// that one's connections have closed; each is its own member of the cluster).
    pub member: String,
    /// Marks this link's frame messages, so it skips its own broadcasts and group frames
    /// (other registries of the tenant in this process hear them: NATS echoes within the one
    /// connection they share).
    sender: u32,
    /// The tenant's subjects.
    pub subjects: Subjects,
    /// This node's connections.
    pub local: Arc<LocalHub>,
    /// The other nodes' connections.
    pub mirror: RwLock<Mirror>,
    out: mpsc::Sender<Outgoing>,
    out_bytes: Arc<AtomicUsize>,
    /// The presence sequence number; held while a local change is made and announced, so
    /// changes reach the others in the order they were made.
    presence: Mutex<u64>,
    /// Groups a local connection joined (those left empty are removed once a tick).
    wanted: Mutex<HashSet<String>>,
    /// Cancelled when the tenant's registry is dropped: the tasks say goodbye and end.
    pub stop: CancellationToken,
    /// `pier_cluster_*` of this tenant.
    pub metrics: ClusterMetrics,
    snapshot_now: Notify,
    /// Connections of a node that vanished, readable (attributes) while the plugin's
    /// `on-close` runs for them here.
    pub departed: Mutex<HashMap<ConnectionId, Remote>>,
    /// Runs the plugin's `on-close` for connections of a vanished node (set by the listener).
    pub departures: std::sync::OnceLock<Departures>,
    /// Swaps to a rolled-out version (set by the deployer).
    pub deploys: std::sync::OnceLock<DeployHook>,
}

/// What runs the plugin's `on-close` for connections of a node that vanished: it blocks (a
/// guest call), so it runs on a blocking thread.
pub type Departures = Box<dyn Fn(Vec<ConnectionId>) + Send + Sync>;

/// What makes the tenant serve a rolled-out version (the deployer): the version's digest in,
/// the version now serving (or why not) out.
pub type DeployHook = Box<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

impl Link {
    /// Starts tenant `name`'s link: its tasks run on the current tokio runtime until the
    /// returned link's `stop` is cancelled.
    pub fn start(cluster: Arc<Cluster>, name: Arc<str>, local: Arc<LocalHub>) -> Arc<Link> {
        let (out, rx) = mpsc::channel(OUT_MESSAGES);
        let member = cluster.member(&name);
        let link = Arc::new(Link {
            member,
            sender: rand::random(),
            subjects: Subjects::new(&cluster.prefix, &name),
            metrics: ClusterMetrics::new(&name),
            name,
            cluster,
            local,
            mirror: RwLock::new(Mirror::default()),
            out,
            out_bytes: Arc::new(AtomicUsize::new(0)),
            presence: Mutex::new(0),
            wanted: Mutex::new(HashSet::new()),
            stop: CancellationToken::new(),
            snapshot_now: Notify::new(),
            departed: Mutex::new(HashMap::new()),
            departures: std::sync::OnceLock::new(),
            deploys: std::sync::OnceLock::new(),
        });
        tokio::spawn(publish(link.clone(), rx));
        tokio::spawn(receive(link.clone()));
        link
    }

    /// The mirror, for reading.
    pub fn mirror(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mirror_mut(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a message on the outgoing queue; false (and counted) when the queue is full.
    fn enqueue(&self, item: Outgoing) -> bool {
        let bytes = match &item {
            Outgoing::Publish { payload, subject } => payload.len() + subject.len(),
            _ => 0,
        };
        if self.out_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > OUT_BYTES {
            self.out_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.metrics.dropped_queue_full.inc();
            return false;
        }
        if self.out.try_send(item).is_err() {
            self.out_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.metrics.dropped_queue_full.inc();
            return false;
        }
        true
    }

    /// Gives a claim up (queued; a lost release leaves a claim that the next claimer of the
    /// value takes over once its holder is seen gone).
    pub fn release(&self, held: Held) {
        self.enqueue(Outgoing::Release(held));
    }

    /// Publishes a frame message; false when it was dropped (queue full).
    pub fn send_frame(&self, subject: String, message: FrameMessage) -> bool {
        self.enqueue(Outgoing::Publish {
            subject,
            payload: message.encode(),
        })
    }

    /// A frame message from this node.
    pub fn frame(&self, kind: FrameKind, target: u64, group: &str, frame: Bytes) -> FrameMessage {
        FrameMessage {
            kind,
            from: self.sender,
            target,
            group: group.to_string(),
            frame,
        }
    }

    /// Makes a local change and announces what it did, both under the presence lock, so the
    /// others apply changes in the order they were made. `make` returns the change to
    /// announce, if any, and what the caller gets back.
    pub fn change<T>(&self, make: impl FnOnce() -> (Option<Change>, T)) -> T {
        let mut seq = lock(&self.presence);
        let (change, result) = make();
        if let Some(change) = change {
            self.announce_locked(&mut seq, change);
        }
        result
    }

    fn announce_locked(&self, seq: &mut u64, change: Change) {
        *seq += 1;
        let message = Presence {
            node: self.member.clone(),
            incarnation: self.cluster.incarnation,
            seq: *seq,
            change,
        };
        match serde_json::to_vec(&message) {
            // A dropped presence message leaves a gap the others notice: they ask for a
            // snapshot.
            Ok(payload) => {
                self.enqueue(Outgoing::Publish {
                    subject: self.subjects.presence(),
                    payload: Bytes::from(payload),
                });
            }
            Err(err) => warn!(listener = %self.name, "cluster: cannot encode presence: {err}"),
        }
    }

    fn announce(&self, change: Change) {
        let mut seq = lock(&self.presence);
        self.announce_locked(&mut seq, change);
    }

    /// Announces everything this node has, in parts of bounded size.
    fn announce_snapshot(&self) {
        let mut seq = lock(&self.presence);
        let mut part = 0u32;
        let mut batch = Vec::new();
        let mut size = 0usize;
        for peer in self.local.peers() {
            let connection = WireConnection {
                peer: WirePeer::from_peer(&peer),
                attributes: self.local.attributes(peer.id).into_iter().collect(),
                groups: self.local.groups_of(peer.id),
            };
            size += connection
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
                + connection.groups.iter().map(|g| g.len() + 4).sum::<usize>()
                + 160;
            batch.push(connection);
            if size >= SNAPSHOT_PART_BYTES {
                let connections = std::mem::take(&mut batch);
                self.announce_locked(&mut seq, Change::Snapshot { part, connections });
                part += 1;
                size = 0;
            }
        }
        if part == 0 || !batch.is_empty() {
            self.announce_locked(
                &mut seq,
                Change::Snapshot {
                    part,
                    connections: batch,
                },
            );
        }
    }

    /// Makes sure this node receives `group`'s frames (a local connection joined it). Queued
    /// before the join is announced.
    pub fn want_group(&self, group: &str) {
        if lock(&self.wanted).insert(group.to_string()) {
            self.enqueue(Outgoing::Subscribe(group.to_string()));
        }
    }

    /// Lets go of `group`'s frames if no local connection is in it any more.
    pub fn maybe_unwant_group(&self, group: &str) {
        if self.local.members(group).is_empty() && lock(&self.wanted).remove(group) {
            self.enqueue(Outgoing::Unsubscribe(group.to_string()));
        }
    }

    /// Delivers a frame message from another node to this node's connections.
    fn deliver(&self, payload: Bytes) {
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.inc_by(payload.len() as u64);
        let Some(message) = FrameMessage::decode(payload) else {
            self.metrics.dropped_malformed.inc();
            return;
        };
        if message.from == self.sender {
            return;
        }
        let except = (message.target != 0).then_some(message.target);
        match message.kind {
            FrameKind::Send => {
                // Refusals (closing, queue full) are the sender's to learn and it cannot:
                // the send already returned. Counted by the local hub like any full queue.
                let _ = self.local.send(message.target, message.frame);
            }
            FrameKind::Close => {
                self.local.close(message.target);
            }
            FrameKind::Broadcast => {
                self.local.broadcast(message.frame, except);
            }
            FrameKind::Group => {
                self.local.group_send(&message.group, message.frame, except);
            }
        }
    }

    fn on_presence(&self, payload: &[u8]) {
        self.metrics.messages_in.inc();
        self.metrics.bytes_in.inc_by(payload.len() as u64);
        let message: Presence = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(err) => {
                self.metrics.dropped_malformed.inc();
                debug!(listener = %self.name, "cluster: malformed presence message: {err}");
                return;
            }
        };
        if message.incarnation == self.cluster.incarnation
            && message.node.split('#').next() != Some(self.cluster.node.as_str())
        {
            warn!(
                listener = %self.name,
                other = %message.node,
                "cluster: another node has this node's incarnation {}; connection ids may collide, restart one of them",
                message.incarnation
            );
        }
        let followups = self
            .mirror_mut()
            .apply(&self.member, message, Instant::now());
        for followup in followups {
            match followup {
                Followup::SendSnapshot => self.snapshot_now.notify_one(),
                Followup::AskSnapshot(of) => self.announce(Change::Resync { of }),
            }
        }
    }

    fn hello(&self) {
        self.announce(Change::Hello);
        self.announce_snapshot();
    }
}

/// Runs the plugin's `on-close` for the connections of a vanished node, on this node (the
/// first surviving one by name, so one node speaks for them): what the plugin says to the
/// others then reaches every node once, as if their own node had closed them.
fn depart(link: &Arc<Link>, gone: Vec<Remote>) {
    if link.departures.get().is_none() {
        return;
    }
    let ids: Vec<ConnectionId> = gone.iter().map(|r| r.peer.id).collect();
    lock(&link.departed).extend(gone.into_iter().map(|r| (r.peer.id, r)));
    let link = link.clone();
    tokio::spawn(async move {
        let run = {
            let link = link.clone();
            let ids = ids.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(departures) = link.departures.get() {
                    departures(ids);
                }
            })
        };
        let _ = run.await;
        let mut departed = lock(&link.departed);
        for id in ids {
            departed.remove(&id);
        }
    });
}

/// Answers a rollout announcement: `received` at once, then `swapped` or `refused`.
fn on_deploy(link: &Arc<Link>, message: async_nats::Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let announcement: super::rollout::Announcement = match serde_json::from_slice(&message.payload)
    {
        Ok(announcement) => announcement,
        Err(_) => {
            link.metrics.dropped_malformed.inc();
            return;
        }
    };
    let link = link.clone();
    tokio::spawn(async move {
        let answer = |state: &str, detail: String| super::rollout::Answer {
            node: link.member.clone(),
            state: state.to_string(),
            detail,
        };
        let client = link.cluster.client().clone();
        let send = |answer: super::rollout::Answer| {
            let client = client.clone();
            let reply = reply.clone();
            async move {
                if let Ok(payload) = serde_json::to_vec(&answer) {
                    let _ = client.publish(reply, payload.into()).await;
                }
            }
        };
        send(answer("received", String::new())).await;
        let outcome = match link.deploys.get() {
            Some(hook) => hook(announcement.version).await,
            None => Err("this node cannot swap this listener's plugin".to_string()),
        };
        let final_answer = match outcome {
            Ok(version) => answer("swapped", version),
            Err(reason) => answer("refused", reason),
        };
        send(final_answer).await;
    });
}

/// Serves the version rolled out to the tenant, if any: a node that started after the rollout
/// or was away during it catches up.
fn catch_up(link: &Arc<Link>) {
    let link = link.clone();
    tokio::spawn(async move {
        let Some(hook) = link.deploys.get() else {
            return;
        };
        match link.cluster.rollout.pointer(&link.name).await {
            Ok(Some(pointer)) => match hook(pointer.version).await {
                Ok(version) => {
                    info!(listener = %link.name, version = %version, "cluster: serving the rolled-out version")
                }
                Err(reason) => {
                    warn!(listener = %link.name, "cluster: cannot serve the rolled-out version: {reason}")
                }
            },
            Ok(None) => {}
            Err(err) => debug!(listener = %link.name, "cluster: no rollout record: {err:#}"),
        }
    });
}

/// Publishes the outgoing queue and keeps the group subscriptions.
async fn publish(link: Arc<Link>, mut rx: mpsc::Receiver<Outgoing>) {
    let client = link.cluster.client().clone();
    let mut groups: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    // After `stop`, what is queued (the goodbye last) gets a moment to go out.
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match stopping {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                match item {
                    Outgoing::Stop => break,
                    Outgoing::Release(held) => link.cluster.claims.release(held).await,
                    Outgoing::Publish { subject, payload } => {
                        let bytes = payload.len() + subject.len();
                        let len = payload.len() as u64;
                        match client.publish(subject, payload).await {
                            Ok(()) => {
                                link.metrics.messages_out.inc();
                                link.metrics.bytes_out.inc_by(len);
                            }
                            Err(err) => {
                                link.metrics.dropped_publish.inc();
                                debug!(listener = %link.name, "cluster: publish failed: {err}");
                            }
                        }
                        link.out_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    }
                    Outgoing::Subscribe(group) => {
                        if let std::collections::hash_map::Entry::Vacant(slot) = groups.entry(group) {
                            let task = subscribe_group(&link, &client, slot.key()).await;
                            slot.insert(task);
                        }
                    }
                    Outgoing::Unsubscribe(group) => {
                        if link.local.members(&group).is_empty()
                            && let Some(task) = groups.remove(&group)
                        {
                            task.abort();
                        }
                    }
                }
            }
            _ = tick.tick() => reconcile(&link, &client, &mut groups).await,
            () = link.stop.cancelled(), if stopping.is_none() => {
                stopping = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            () = grace => break,
        }
    }
    for (_, task) in groups {
        task.abort();
    }
}

/// Subscribes to `group`'s subject; the returned task delivers its frames until aborted
/// (aborting drops the subscriber, which unsubscribes).
async fn subscribe_group(
    link: &Arc<Link>,
    client: &async_nats::Client,
    group: &str,
) -> JoinHandle<()> {
    let subscription = client.subscribe(link.subjects.group(group)).await;
    let link = link.clone();
    let group = group.to_string();
    tokio::spawn(async move {
        let mut subscriber = match subscription {
            Ok(subscriber) => subscriber,
            Err(err) => {
                warn!(listener = %link.name, group = %group, "cluster: cannot subscribe to the group: {err}");
                return;
            }
        };
        while let Some(message) = subscriber.next().await {
            link.deliver(message.payload);
        }
    })
}

/// Subscribes wanted groups that have no subscription and drops those without local members.
async fn reconcile(
    link: &Arc<Link>,
    client: &async_nats::Client,
    groups: &mut HashMap<String, JoinHandle<()>>,
) {
    let empty: Vec<String> = groups
        .keys()
        .filter(|g| link.local.members(g).is_empty())
        .cloned()
        .collect();
    for group in empty {
        lock(&link.wanted).remove(&group);
        if let Some(task) = groups.remove(&group) {
            task.abort();
        }
    }
    let missing: Vec<String> = lock(&link.wanted)
        .iter()
        .filter(|g| !groups.contains_key(*g))
        .cloned()
        .collect();
    for group in missing {
        if link.local.members(&group).is_empty() {
            lock(&link.wanted).remove(&group);
        } else {
            let task = subscribe_group(link, client, &group).await;
            groups.insert(group, task);
        }
    }
}

/// Receives presence and frames, heartbeats, and says hello on every (re)connection.
async fn receive(link: Arc<Link>) {
    let client = link.cluster.client().clone();
    let subscribed = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(link.subjects.presence()).await?,
            client.subscribe(link.subjects.node(&link.member)).await?,
            client.subscribe(link.subjects.all()).await?,
            client.subscribe(link.subjects.deploy()).await?,
        ))
    };
    let (mut presence, mut directed, mut all, mut deploys) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(err) => {
            warn!(listener = %link.name, "cluster: cannot subscribe; this tenant stays node-local: {err}");
            return;
        }
    };
    let mut state = link.cluster.connection_state();
    let mut tick = tokio::time::interval(HEARTBEAT);
    if *state.borrow_and_update() {
        link.hello();
        catch_up(&link);
    }
    info!(listener = %link.name, node = %link.member, "cluster: tenant joined the cluster");
    loop {
        tokio::select! {
            Some(message) = presence.next() => link.on_presence(&message.payload),
            Some(message) = directed.next() => link.deliver(message.payload),
            Some(message) = all.next() => link.deliver(message.payload),
            Some(message) = deploys.next() => on_deploy(&link, message),
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
                // Back or gone, what was known of the others is stale either way; on the way
                // back everyone is told to send a fresh snapshot.
                link.mirror_mut().clear();
                if *state.borrow_and_update() {
                    link.hello();
                    catch_up(&link);
                }
            }
            () = link.snapshot_now.notified() => link.announce_snapshot(),
            _ = tick.tick() => {
                let open = link.local.listener_stats().connected as usize;
                link.announce(Change::Heartbeat { open });
                let (expired, speaker) = {
                    let mut mirror = link.mirror_mut();
                    let expired = mirror.expire(Instant::now());
                    link.metrics.nodes.set(mirror.node_count() as i64);
                    (expired, mirror.first_by_name(&link.member))
                };
                for (node, gone) in expired {
                    info!(listener = %link.name, node = %node, connections = gone.len(), "cluster: node went silent; its connections are gone from this node's view");
                    if speaker && !gone.is_empty() {
                        depart(&link, gone);
                    }
                }
            }
            () = link.stop.cancelled() => break,
        }
    }
    link.announce(Change::Goodbye);
    link.enqueue(Outgoing::Stop);
}
