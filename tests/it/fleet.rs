//! Several pier processes on one machine: with `reuse_port` they share a listening port and
//! the kernel spreads new connections over them.

use crate::support::ports;
use crate::support::served::{self, LineClient, Served};

#[test]
fn two_processes_with_reuse_port_share_one_port_and_both_accept() {
    let listen = format!("127.0.0.1:{}", ports::reserved_port());
    let args = [
        "--listen",
        &listen,
        "--framing",
        "lines",
        "--reuse-port",
        "--admin",
        "127.0.0.1:0",
    ];
    let first = Served::start(&args);
    let second = Served::start(&args);
    let (first_admin, second_admin) = (first.admin_addr(), second.admin_addr());
    // Each connection is answered by whichever process the kernel gave it to; all stay open.
    let clients: Vec<LineClient> = (0..40)
        .map(|i| {
            let mut client = LineClient::connect(&listen);
            assert_eq!(client.ask(&format!("hi {i}")), format!("Echo: hi {i}"));
            client
        })
        .collect();
    let (on_first, on_second) = (
        served::admin_connections(&first_admin).len(),
        served::admin_connections(&second_admin).len(),
    );
    assert_eq!(
        on_first + on_second,
        clients.len(),
        "every client is on one of them"
    );
    // The kernel hashes each connection's addresses and ports to a socket: 40 distinct source
    // ports all landing on one of two sockets has odds of one in 2^39.
    assert!(
        on_first > 0 && on_second > 0,
        "connections spread over both: {on_first} and {on_second}"
    );
}
