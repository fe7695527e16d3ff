//! A test plugin that exercises every host import so the contract can be tested over real
//! sockets. It keeps no state in guest memory; everything it knows comes from the host.
//!
//! - on open: refuses with `server full` when more than 5 connections are open, otherwise greets
//!   with `welcome ID` (on TLS: plus the client subject, ALPN protocol and SNI name it was given);
//! - frames (lines): `whoami` → `ID REMOTE-ADDR LISTENER` (plus `tls subject=... sans=...
//!   fingerprint=...` on TLS); `peers` → the number of peers;
//!   `send ID TEXT` → queues TEXT for ID and replies `sent` or the error's name;
//!   `broadcast TEXT` → queues TEXT for everyone else and replies `reached N`;
//!   `close` → replies `bye` and closes itself; `close ID` → closes ID, replies `closed true|false`;
//!   `ordered` → sends `first` to itself, then replies `second`; `log TEXT` → logs TEXT at info;
//!   `after MS` → a one-shot timer that fires `fired ID`; `every MS` → a periodic timer whose
//!   firings say `tick ID N` and which cancels itself after the third (count kept in the host);
//!   `join G` → joins group G (`joined`); `members G` → how many members G has;
//!   `gsend G TEXT` → queues TEXT for G's other members and replies `reached N`;
//!   `connected` → the listener's `stats.connected`;
//!   anything else → `Echo: ` + frame;
//! - on close: logs and tells everyone else `left ID REASON`.

use pier_sdk::Level;
use pier_sdk::connections::{self, SendError};
use pier_sdk::log;
use pier_sdk::{CloseReason, ConnectionId, Peer, Plugin, Refusal};
use pier_sdk::{attributes, groups, stats, timers};

/// Most connections accepted at once.
const CAPACITY: usize = 5;

struct Testkit;

fn reason_name(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::PeerClosed => "peer-closed",
        CloseReason::PluginClosed => "plugin-closed",
        CloseReason::IdleTimeout => "idle-timeout",
        CloseReason::ProtocolError => "protocol-error",
        CloseReason::SlowConsumer => "slow-consumer",
        CloseReason::Shutdown => "shutdown",
        CloseReason::Fault => "fault",
        CloseReason::IoError => "io-error",
    }
}

fn send_error_name(err: SendError) -> &'static str {
    match err {
        SendError::UnknownConnection => "unknown-connection",
        SendError::Closing => "closing",
        SendError::FrameTooLarge => "frame-too-large",
        SendError::QueueFull => "queue-full",
    }
}

impl Plugin for Testkit {
    fn on_open(peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        if connections::peers().len() > CAPACITY {
            return Err(Refusal {
                reason: format!("capacity {CAPACITY} reached"),
                message: Some(b"server full".to_vec()),
            });
        }
        // On TLS listeners the greeting also shows what on-open was told about the client.
        let greeting = match &peer.tls {
            None => format!("welcome {}", peer.id),
            Some(tls) => format!(
                "welcome {} tls subject={} alpn={} sni={}",
                peer.id,
                tls.client_subject.clone().unwrap_or_default(),
                tls.alpn.clone().unwrap_or_default(),
                tls.server_name.clone().unwrap_or_default(),
            ),
        };
        Ok(Some(greeting.into_bytes()))
    }

    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(frame).into_owned();
        let (command, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let reply = match command {
            "whoami" => match connections::lookup(id) {
                Some(p) => match p.tls {
                    None => format!("{} {} {}", p.id, p.remote_addr, p.listener),
                    Some(tls) => format!(
                        "{} {} {} tls subject={} sans={} fingerprint={}",
                        p.id,
                        p.remote_addr,
                        p.listener,
                        tls.client_subject.unwrap_or_default(),
                        tls.client_sans.join(","),
                        tls.client_fingerprint.unwrap_or_default(),
                    ),
                },
                None => "not registered".to_string(),
            },
            "peers" => connections::peers().len().to_string(),
            "send" => {
                let (to, body) = rest.split_once(' ').unwrap_or((rest, ""));
                match to.parse::<u64>() {
                    Ok(to) => match connections::send(to, body.as_bytes()) {
                        Ok(()) => "sent".to_string(),
                        Err(e) => send_error_name(e).to_string(),
                    },
                    Err(_) => "bad id".to_string(),
                }
            }
            "broadcast" => format!(
                "reached {}",
                connections::broadcast(rest.as_bytes(), Some(id))
            ),
            "close" if rest.is_empty() => {
                connections::close(id);
                "bye".to_string()
            }
            "close" => match rest.parse::<u64>() {
                Ok(other) => format!("closed {}", connections::close(other)),
                Err(_) => "bad id".to_string(),
            },
            "ordered" => {
                let _ = connections::send(id, b"first");
                "second".to_string()
            }
            "after" | "every" => {
                let ms: u64 = rest.parse().unwrap_or(10);
                let interval = (command == "every").then_some(ms);
                match timers::start(id, ms, interval) {
                    Ok(timer) => {
                        if interval.is_some() {
                            // The tick count lives in the host, like all durable state.
                            let _ = attributes::set(id, &format!("ticks-{timer}"), "0");
                        }
                        format!("timer {timer}")
                    }
                    Err(e) => format!("timer error {e:?}"),
                }
            }
            "log" => {
                log::log(Level::Info, rest);
                "logged".to_string()
            }
            "join" => match groups::join(id, rest) {
                Ok(()) => "joined".to_string(),
                Err(e) => format!("join error {e:?}"),
            },
            "members" => groups::members(rest).len().to_string(),
            "gsend" => {
                let (group, body) = rest.split_once(' ').unwrap_or((rest, ""));
                format!("reached {}", groups::send(group, body.as_bytes(), Some(id)))
            }
            "connected" => stats::listener().connected.to_string(),
            _ => return Some([b"Echo: ".as_slice(), frame].concat()),
        };
        Some(reply.into_bytes())
    }

    fn on_close(id: ConnectionId, reason: CloseReason) {
        let note = format!("left {id} {}", reason_name(reason));
        log::log(Level::Info, &note);
        connections::broadcast(note.as_bytes(), None);
    }
}

impl pier_sdk::Timers for Testkit {
    fn on_timer(id: ConnectionId, timer: u64) -> Option<Vec<u8>> {
        let key = format!("ticks-{timer}");
        let Some(count) = attributes::get(id, &key) else {
            return Some(format!("fired {timer}").into_bytes());
        };
        let count: u32 = count.parse().unwrap_or(0) + 1;
        let _ = attributes::set(id, &key, &count.to_string());
        if count >= 3 {
            timers::cancel(timer);
        }
        Some(format!("tick {timer} {count}").into_bytes())
    }
}

pier_sdk::export!(Testkit, timers);
