//! What pier nodes say to each other over NATS: the subjects, and the messages on them.
//!
//! Subjects, for a tenant (listener name) `T` under the prefix `P` (both escaped by [`token`]):
//! - `P.T.presence`: every node of the tenant publishes and subscribes. Who is connected where
//!   ([`Presence`]): connections opening and closing, attributes and group memberships changing,
//!   heartbeats, and full snapshots on request. Small and rare next to frames.
//! - `P.T.node.N`: frames and close requests for connections on node `N` ([`Directed`]); only
//!   `N` subscribes, so a `send` to one connection reaches that one node.
//! - `P.T.all`: `connections.broadcast` frames; every node of the tenant subscribes.
//! - `P.T.deploy`: a new plugin version to serve (`pier deploy --cluster`), answered by each
//!   node on the request's reply subject (see [`super::rollout`]).
//! - `P.T.group.G`: `groups.send` frames for group `G` (a digest of its name); a node
//!   subscribes only while one of its connections is a member.
//!
//! Frames travel as raw bytes behind a small fixed header ([`FrameMessage`]) so a chat line
//! costs its length plus 18 bytes; presence messages are JSON (serde), rare enough that being
//! readable with `nats sub` is worth more than their size.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::net::tls::TlsInfo;
use crate::tenant::hub::{ConnectionId, PeerInfo};

/// Escapes `name` into one subject token: letters, digits, `-` and `_` stay, every other byte
/// becomes `~XX` (hex). Injective (`~` is never kept), so two tenants never share a subject,
/// and free of `.`, `*`, `>` and spaces, which NATS gives meaning to.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("~{byte:02x}"));
        }
    }
    out
}

/// The subjects of one tenant.
#[derive(Clone, Debug)]
pub struct Subjects {
    base: String,
}

impl Subjects {
    /// The subjects of tenant `tenant` under `prefix`.
    pub fn new(prefix: &str, tenant: &str) -> Subjects {
        Subjects {
            base: format!("{}.{}", token(prefix), token(tenant)),
        }
    }

    /// Presence: who is connected where.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.base)
    }

    /// Frames and close requests for the connections of `node`.
    pub fn node(&self, node: &str) -> String {
        format!("{}.node.{}", self.base, token(node))
    }

    /// Rollout announcements (`pier deploy --cluster`).
    pub fn deploy(&self) -> String {
        format!("{}.deploy", self.base)
    }

    /// Broadcast frames.
    pub fn all(&self) -> String {
        format!("{}.all", self.base)
    }

    /// Frames for group `group`: a digest, so any group name (up to 256 bytes, any
    /// characters) is one short token; the message carries the name itself too.
    pub fn group(&self, group: &str) -> String {
        let digest = Sha256::digest(group.as_bytes());
        format!("{}.group.{}", self.base, hex::encode(&digest[..12]))
    }
}

/// A peer as presence messages carry it (WIT `types.peer`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WirePeer {
    /// The connection id.
    pub id: ConnectionId,
    /// The client's address.
    pub remote: String,
    /// The address it connected to.
    pub local: String,
    /// When it was accepted, ms since the Unix epoch.
    pub at: u64,
    /// TLS details: server name, ALPN, client subject, SANs, fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WireTls>,
}

/// The TLS part of [`WirePeer`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireTls {
    /// SNI.
    pub sni: Option<String>,
    /// ALPN.
    pub alpn: Option<String>,
    /// Client certificate subject.
    pub subject: Option<String>,
    /// Client certificate SANs.
    pub sans: Vec<String>,
    /// Client certificate fingerprint.
    pub fingerprint: Option<String>,
}

impl WirePeer {
    /// The wire form of a local peer.
    pub fn from_peer(peer: &PeerInfo) -> WirePeer {
        WirePeer {
            id: peer.id,
            remote: peer.remote_addr.clone(),
            local: peer.local_addr.clone(),
            at: peer
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            tls: peer.tls.as_ref().map(|tls| WireTls {
                sni: tls.server_name.clone(),
                alpn: tls.alpn.clone(),
                subject: tls.client_subject.clone(),
                sans: tls.client_sans.clone(),
                fingerprint: tls.client_fingerprint.clone(),
            }),
        }
    }

    /// The host's form, for the plugin; `listener` is the tenant's name.
    pub fn to_peer(&self, listener: &std::sync::Arc<str>) -> PeerInfo {
        PeerInfo {
            id: self.id,
            remote_addr: self.remote.clone(),
            local_addr: self.local.clone(),
            listener: listener.clone(),
            connected_at: UNIX_EPOCH + Duration::from_millis(self.at),
            tls: self.tls.as_ref().map(|tls| {
                Box::new(TlsInfo {
                    server_name: tls.sni.clone(),
                    alpn: tls.alpn.clone(),
                    client_subject: tls.subject.clone(),
                    client_sans: tls.sans.clone(),
                    client_fingerprint: tls.fingerprint.clone(),
                })
            }),
        }
    }
}

/// Everything a node knows about one of its connections, as a snapshot carries it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireConnection {
    /// Who it is.
    pub peer: WirePeer,
    /// Its attributes.
    #[serde(default)]
    pub attributes: HashMap<String, String>,
    /// Its groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One message on the presence subject. Every message names its node and carries that node's
/// presence sequence number (`seq`, one per message the node published, from 1): a receiver
/// that sees a gap asks for a [`Change::Snapshot`] instead of trusting a view that missed a
/// change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Presence {
    /// The node that published it.
    pub node: String,
    /// The process incarnation (the high bits of its connection ids): a restarted node is a
    /// new incarnation, and what the others knew of the old one is dropped.
    pub incarnation: u32,
    /// The node's presence sequence number.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

/// What a presence message says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// "I am alive", every heartbeat interval, with how many connections the node has.
    Heartbeat {
        /// Open connections on the node.
        open: usize,
    },
    /// A node (re)joined: everyone answers with a snapshot.
    Hello,
    /// Asks `of` for a snapshot (a gap was seen in its sequence).
    Resync {
        /// The node asked.
        of: String,
    },
    /// Everything the node has, in parts of bounded size: part 0 replaces what others knew
    /// of it, later parts (consecutive sequence numbers) add to it.
    Snapshot {
        /// Which part, from 0.
        #[serde(default)]
        part: u32,
        /// Open connections.
        connections: Vec<WireConnection>,
    },
    /// A connection opened.
    Open {
        /// Who.
        peer: WirePeer,
    },
    /// A connection started closing: it leaves `peers` and its groups.
    Close {
        /// Which.
        id: ConnectionId,
    },
    /// An attribute was set (`value`) or removed (`None`).
    Attribute {
        /// Whose.
        id: ConnectionId,
        /// Which.
        key: String,
        /// The new value.
        value: Option<String>,
    },
    /// A connection joined a group.
    Join {
        /// Who.
        id: ConnectionId,
        /// Which group.
        group: String,
    },
    /// A connection left a group.
    Leave {
        /// Who.
        id: ConnectionId,
        /// Which group.
        group: String,
    },
    /// The node is leaving the cluster (shutdown): forget it now rather than at the timeout.
    Goodbye,
}

/// What a frame message asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// `connections.send` to `target`.
    Send,
    /// `connections.close` of `target` (no payload).
    Close,
    /// `connections.broadcast`; `target` is the excepted id or 0.
    Broadcast,
    /// `groups.send`; `target` is the excepted id or 0; the payload starts with the group name.
    Group,
}

/// A frame between nodes: `kind` (1 byte), the sending link's random mark (4 bytes, so a
/// registry skips its own broadcasts), `target` (8 bytes), for groups the name's length (2 bytes) and the
/// name, then the frame.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameMessage {
    /// What to do.
    pub kind: FrameKind,
    /// The sending link's mark.
    pub from: u32,
    /// The connection it is for, or the excepted one (0: none).
    pub target: ConnectionId,
    /// The group, for [`FrameKind::Group`].
    pub group: String,
    /// The frame.
    pub frame: Bytes,
}

impl FrameMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(15 + self.group.len() + self.frame.len());
        out.put_u8(match self.kind {
            FrameKind::Send => 1,
            FrameKind::Close => 2,
            FrameKind::Broadcast => 3,
            FrameKind::Group => 4,
        });
        out.put_u32(self.from);
        out.put_u64(self.target);
        if self.kind == FrameKind::Group {
            // Group names are at most 256 bytes (`hub::MAX_NAME`).
            out.put_u16(u16::try_from(self.group.len()).unwrap_or(u16::MAX));
            out.put_slice(self.group.as_bytes());
        }
        out.put_slice(&self.frame);
        out.freeze()
    }

    /// Decodes a message; `None` when it is malformed (it is then dropped and counted).
    pub fn decode(mut data: Bytes) -> Option<FrameMessage> {
        if data.len() < 13 {
            return None;
        }
        let kind = match data.get_u8() {
            1 => FrameKind::Send,
            2 => FrameKind::Close,
            3 => FrameKind::Broadcast,
            4 => FrameKind::Group,
            _ => return None,
        };
        let from = data.get_u32();
        let target = data.get_u64();
        let mut group = String::new();
        if kind == FrameKind::Group {
            if data.len() < 2 {
                return None;
            }
            let len = usize::from(data.get_u16());
            if data.len() < len {
                return None;
            }
            group = String::from_utf8(data.split_to(len).to_vec()).ok()?;
        }
        Some(FrameMessage {
            kind,
            from,
            target,
            group,
            frame: data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_plain_names_and_escape_the_rest_injectively() {
        assert_eq!(token("chat-1_a"), "chat-1_a");
        assert_eq!(token("a.b"), "a~2eb");
        assert_eq!(token("chat/x.example"), "chat~2fx~2eexample");
        assert_ne!(token("a.b"), token("a_b"));
        assert_ne!(token("a~2eb"), token("a.b"));
    }

    #[test]
    fn frame_messages_round_trip_and_garbage_is_refused() {
        for kind in [
            FrameKind::Send,
            FrameKind::Close,
            FrameKind::Broadcast,
            FrameKind::Group,
        ] {
            let message = FrameMessage {
                kind,
                from: 7,
                target: 1 << 40 | 3,
                group: if kind == FrameKind::Group {
                    "room ☃".into()
                } else {
                    String::new()
                },
                frame: Bytes::from_static(b"hello"),
            };
            assert_eq!(FrameMessage::decode(message.encode()), Some(message));
        }
        assert_eq!(FrameMessage::decode(Bytes::from_static(b"short")), None);
        let mut bad_kind = vec![9u8];
        bad_kind.extend_from_slice(&[0; 12]);
        assert_eq!(FrameMessage::decode(Bytes::from(bad_kind)), None);
        let mut long_group = vec![4u8];
        long_group.extend_from_slice(&[0; 12]);
        long_group.extend_from_slice(&[0xff, 0xff, b'a']);
        assert_eq!(FrameMessage::decode(Bytes::from(long_group)), None);
    }

    #[test]
    fn presence_messages_are_tagged_json() {
        let message = Presence {
            node: "a".into(),
            incarnation: 5,
            seq: 2,
            change: Change::Join {
                id: 9,
                group: "chat".into(),
            },
        };
        let text = serde_json::to_string(&message).expect("serialize");
        assert!(text.contains(r#""op":"join""#), "{text}");
        assert_eq!(
            serde_json::from_str::<Presence>(&text).expect("parse"),
            message
        );
    }
}
