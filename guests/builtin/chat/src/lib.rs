//! The built-in chat plugin (a room of named users), for `nc`/telnet with line framing.
//!
//! A newcomer is asked for a name; the first line is the name. Named members are in the host
//! group `chat` and carry their name in the host attribute `name`, so nothing lives in guest
//! memory and the plugin carries on unchanged if its instance is recreated between two lines.
//! Lines from a named member reach every *other* named member as `NAME: text`.
//! Commands: `/list`, `/nick NEW`, `/quit`, `/help`.

use pier_sdk::attributes::{self, ClaimError};
use pier_sdk::{CloseReason, ConnectionId, Peer, Plugin, Refusal};
use pier_sdk::{connections, groups};

/// The attribute holding a member's name.
const NAME: &str = "name";
/// The group of named members.
const ROOM: &str = "chat";
/// Longest name, in characters.
const MAX_NAME: usize = 32;
/// What the chat answers to `/help` and unknown commands.
const COMMANDS: &str = "Commands: /list, /nick NEW, /quit, /help";

struct Chat;

fn name_of(id: ConnectionId) -> Option<String> {
    attributes::get(id, NAME)
}

/// Tells every other named member.
fn tell_others(id: ConnectionId, text: &str) {
    groups::send(ROOM, text.as_bytes(), Some(id));
}

/// Why a proposed name is not acceptable, as the sentence to send back.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Name cannot be empty.".into());
    }
    if name.chars().count() > MAX_NAME {
        return Some(format!("Name too long (at most {MAX_NAME} characters)."));
    }
    if name.starts_with('/') || name.chars().any(char::is_control) {
        return Some("Names cannot start with / or contain control characters.".into());
    }
    None
}

/// Takes `name` for `id` if no one else in the room (on any node) has it: one atomic step, so
/// two newcomers asking for one name at once never both get it.
fn claim_name(id: ConnectionId, name: &str) -> Result<(), String> {
    attributes::claim(id, NAME, name).map_err(|err| match err {
        ClaimError::Taken => format!("The name {name} is taken."),
        ClaimError::Unavailable => "Names cannot be checked right now; try again.".to_string(),
        other => format!("Cannot use that name ({other:?})."),
    })
}

fn choose_name(id: ConnectionId, line: &str) -> String {
    let name = line.trim();
    if let Some(problem) = name_problem(name) {
        return format!("{problem} Enter your name:");
    }
    if let Err(problem) = claim_name(id, name) {
        return format!("{problem} Enter your name:");
    }
    if groups::join(id, ROOM).is_err() {
        let _ = attributes::remove(id, NAME);
        return "Cannot join the chat right now. Enter your name:".into();
    }
    tell_others(id, &format!("{name} joined the chat"));
    format!("Hello {name}! You can now chat.")
}

fn command(id: ConnectionId, name: &str, line: &str) -> Option<String> {
    let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    Some(match cmd {
        "/list" => {
            let mut names: Vec<String> = groups::members(ROOM)
                .into_iter()
                .filter_map(name_of)
                .collect();
            names.sort();
            format!("Online ({}): {}", names.len(), names.join(", "))
        }
        "/nick" => {
            if arg == name {
                format!("You are already {name}.")
            } else if let Some(problem) = name_problem(arg) {
                problem
            } else {
                match claim_name(id, arg) {
                    Ok(()) => {
                        tell_others(id, &format!("{name} is now known as {arg}"));
                        format!("You are now known as {arg}.")
                    }
                    Err(problem) => problem,
                }
            }
        }
        "/quit" => {
            connections::close(id);
            format!("Goodbye {name}!")
        }
        "/help" => COMMANDS.to_string(),
        other => format!("Unknown command {other}. {COMMANDS}"),
    })
}

impl Plugin for Chat {
    fn on_open(_peer: Peer) -> Result<Option<Vec<u8>>, Refusal> {
        Ok(Some(b"Welcome to pier chat! Enter your name:".to_vec()))
    }

    fn on_frame(id: ConnectionId, frame: &[u8]) -> Option<Vec<u8>> {
        let line = String::from_utf8_lossy(frame);
        let line = line.trim_end();
        let reply = match name_of(id) {
            None => Some(choose_name(id, line)),
            Some(name) if line.starts_with('/') => command(id, &name, line),
            Some(_) if line.trim().is_empty() => None,
            Some(name) => {
                tell_others(id, &format!("{name}: {line}"));
                None
            }
        };
        reply.map(String::into_bytes)
    }

    fn on_close(id: ConnectionId, _reason: CloseReason) {
        // The host has already taken the leaver out of the room, so this reaches the others.
        if let Some(name) = name_of(id) {
            tell_others(id, &format!("{name} left the chat"));
        }
    }
}

pier_sdk::export!(Chat);
