//! Ports a test must name before anything listens on them (a config that two places must agree
//! on, a server restarted on the port it had). A port taken from `bind(":0")` and released is
//! in the kernel's ephemeral range, where any outgoing connection of any test running alongside
//! may be given it as its source port in the meantime, and the rebind fails with "address in
//! use" (seen in CI). These ports come from below that range, where the kernel never hands out
//! source ports, and no two calls in one test process return the same one.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the kernel's ephemeral range starts (Linux's `ip_local_port_range`; 32768 when unread).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port outside the ephemeral range that nothing listens on now and that no other call in
/// this process has returned. Another process may still choose it; the range (≈ 20,000 ports)
/// and a start that differs per process make that unlikely, and a caller rebinding it retries.
pub fn reserved_port() -> u16 {
    const LOW: u16 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let high = ephemeral_start().max(LOW + 1_000);
    let span = u32::from(high - LOW);
    // Each process starts at its own place in the range (test binaries run one after another,
    // but a developer may run two at once).
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = LOW + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {high}");
}

/// Binds 127.0.0.1:`port`, retrying while the address is still in use (a listener just closed
/// by a thread that is finishing), for up to 30 s: an eventually-true condition, polled, never
/// a sleep that assumes how long it takes.
pub fn bind_again(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("bind 127.0.0.1:{port} again: {e}"),
        }
    }
}
