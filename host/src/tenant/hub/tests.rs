//! The registry's unit tests: sends and broadcasts, attributes, groups, timers, counters.

use std::time::Duration;

use bytes::Bytes;

use super::*;

fn peer(id: ConnectionId) -> PeerInfo {
    PeerInfo {
        id,
        remote_addr: "127.0.0.1:1".into(),
        local_addr: "127.0.0.1:2".into(),
        listener: Arc::from("test"),
        connected_at: SystemTime::now(),
        tls: None,
    }
}

#[test]
fn send_reports_each_failure_kind() {
    let hub = LocalHub::new(1, 4);
    let mut mb = hub.register(peer(1));
    assert_eq!(
        hub.send(2, Bytes::from_static(b"x")),
        Err(SendError::UnknownConnection)
    );
    assert_eq!(
        hub.send(1, Bytes::from_static(b"12345")),
        Err(SendError::FrameTooLarge)
    );
    assert_eq!(hub.send(1, Bytes::from_static(b"a")), Ok(()));
    assert_eq!(
        hub.send(1, Bytes::from_static(b"b")),
        Err(SendError::QueueFull)
    );
    assert_eq!(
        mb.try_next(),
        Some(Delivery::Frame(Bytes::from_static(b"a")))
    );
    assert_eq!(
        hub.send(1, Bytes::from_static(b"b")),
        Ok(()),
        "taking a frame frees its slot"
    );
    assert!(hub.close(1));
    assert_eq!(
        mb.try_next(),
        Some(Delivery::Frame(Bytes::from_static(b"b")))
    );
    assert_eq!(mb.try_next(), Some(Delivery::Control(Control::Close)));
    assert_eq!(
        hub.send(1, Bytes::from_static(b"c")),
        Err(SendError::Closing)
    );
    hub.unregister(1);
    assert!(!hub.close(1));
}

#[test]
fn broadcast_skips_the_sender_and_full_queues() {
    let hub = LocalHub::new(1, 64);
    let _a = hub.register(peer(1));
    let _b = hub.register(peer(2));
    let _c = hub.register(peer(3));
    hub.send(3, Bytes::from_static(b"fill")).unwrap();
    assert_eq!(hub.broadcast(Bytes::from_static(b"hi"), Some(1)), 1);
    assert_eq!(hub.peers().len(), 3);
}

#[test]
fn attributes_are_validated_found_and_readable_while_closing() {
    let hub = LocalHub::new(4, 64);
    let _a = hub.register(peer(1));
    let _b = hub.register(peer(2));
    assert_eq!(
        hub.set_attribute(1, "", "x".into()),
        Err(AttributeError::BadKey)
    );
    assert_eq!(
        hub.set_attribute(1, "k", "v".repeat(MAX_ATTRIBUTE_VALUE + 1)),
        Err(AttributeError::ValueTooLong)
    );
    assert_eq!(
        hub.set_attribute(9, "k", "v".into()),
        Err(AttributeError::UnknownConnection)
    );
    for i in 0..MAX_PER_CONNECTION {
        hub.set_attribute(2, &format!("k{i}"), "v".into()).unwrap();
    }
    assert_eq!(
        hub.set_attribute(2, "one-more", "v".into()),
        Err(AttributeError::TooMany)
    );
    hub.set_attribute(1, "name", "ann".into()).unwrap();
    assert_eq!(hub.find_attribute("name", "ann"), vec![1]);
    hub.begin_close(1);
    assert_eq!(hub.attribute(1, "name").as_deref(), Some("ann"));
    assert!(
        hub.find_attribute("name", "ann").is_empty(),
        "closing connections are not found"
    );
    hub.unregister(1);
    assert_eq!(hub.attribute(1, "name"), None);
}

#[test]
fn a_claimed_value_is_held_by_one_open_connection_at_a_time() {
    let hub = LocalHub::new(4, 64);
    let _one = hub.register(peer(1));
    let _two = hub.register(peer(2));
    assert_eq!(hub.claim_here(1, "name", "ann".into()), Ok(()));
    assert_eq!(
        hub.claim_here(1, "name", "ann".into()),
        Ok(()),
        "its own value"
    );
    assert_eq!(
        hub.claim_here(2, "name", "ann".into()),
        Err(ClaimError::Taken)
    );
    assert_eq!(hub.attribute(2, "name"), None, "nothing was set");
    // A value set without claiming counts as held too.
    hub.set_attribute(2, "name", "bob".into()).expect("set");
    assert_eq!(
        hub.claim_here(1, "name", "bob".into()),
        Err(ClaimError::Taken)
    );
    assert_eq!(
        hub.claim_here(3, "name", "cat".into()),
        Err(ClaimError::UnknownConnection)
    );
    assert_eq!(hub.claim_here(2, "", "x".into()), Err(ClaimError::BadKey));
    // Once its holder is closing, the value is free.
    hub.begin_close(1);
    assert_eq!(hub.claim_here(2, "name", "ann".into()), Ok(()));
    assert_eq!(hub.attribute(2, "name").as_deref(), Some("ann"));
}

#[test]
fn groups_send_to_members_and_forget_closing_connections() {
    let hub = LocalHub::new(4, 64);
    let mut a = hub.register(peer(1));
    let mut b = hub.register(peer(2));
    let _c = hub.register(peer(3));
    hub.join(1, "room").unwrap();
    hub.join(2, "room").unwrap();
    assert_eq!(hub.join(3, ""), Err(GroupError::BadName));
    assert_eq!(
        hub.group_send("room", Bytes::from_static(b"hi"), Some(1)),
        1
    );
    assert_eq!(
        b.try_next(),
        Some(Delivery::Frame(Bytes::from_static(b"hi")))
    );
    assert_eq!(a.try_next(), None);
    hub.begin_close(2);
    assert_eq!(hub.members("room"), vec![1]);
    assert!(hub.leave(1, "room"));
    assert!(hub.members("room").is_empty());
    assert!(!hub.leave(1, "room"));
}

#[test]
fn timers_are_capped_routed_and_forgotten() {
    let hub = LocalHub::new(4, 64);
    let mut a = hub.register(peer(1));
    let t = hub.start_timer(1, Duration::from_millis(5), None).unwrap();
    assert_eq!(
        a.try_next().unwrap(),
        Delivery::Control(Control::StartTimer {
            timer: t,
            delay: Duration::from_millis(5),
            interval: None
        })
    );
    assert!(hub.cancel_timer(t));
    assert_eq!(
        a.try_next().unwrap(),
        Delivery::Control(Control::CancelTimer(t))
    );
    assert!(!hub.cancel_timer(t));
    for _ in 0..MAX_PER_CONNECTION {
        hub.start_timer(1, Duration::from_secs(1), Some(Duration::ZERO))
            .unwrap();
    }
    assert_eq!(
        hub.start_timer(1, Duration::from_secs(1), None),
        Err(TimerError::TooMany)
    );
    assert_eq!(
        hub.start_timer(7, Duration::from_secs(1), None),
        Err(TimerError::UnknownConnection)
    );
    hub.unregister(1);
    assert!(lock(&hub.timer_owners).is_empty());
}

#[test]
fn stats_count_traffic_per_connection_and_listener() {
    let hub = LocalHub::new(4, 64);
    let a = hub.register(peer(1));
    let _b = hub.register(peer(2));
    let mut tally = Tally {
        frames_in: 1,
        bytes_in: 10,
        frames_out: 1,
        bytes_out: 7,
    };
    a.meter.record(&mut tally);
    assert_eq!(tally.frames_in, 0, "recording resets the tally");
    let l = hub.listener_stats();
    assert_eq!(
        (
            l.connected,
            l.accepted,
            l.frames_in,
            l.bytes_in,
            l.frames_out,
            l.bytes_out
        ),
        (2, 2, 1, 10, 1, 7)
    );
    let c = hub.connection_stats(1).unwrap();
    assert_eq!(
        (c.frames_in, c.bytes_in, c.frames_out, c.bytes_out),
        (1, 10, 1, 7)
    );
    assert_eq!(hub.connection_stats(2).unwrap().frames_in, 0);
    assert_eq!(hub.all_connection_stats().len(), 2);
}
