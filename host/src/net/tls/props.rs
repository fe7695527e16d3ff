//! Property tests for the first bytes a TLS listener reads: client hellos, fed to a rustls
//! `ServerConnection` built by this module's `server_config` (SNI certificate choice, ALPN,
//! optional client certificates) from certificates made by [`super::certgen`].
//!
//! The connection is driven as tokio-rustls drives it during the handshake: each read handed to
//! `read_tls` (which may take it in several pieces), `process_new_packets` after every piece.
//! Inputs are valid client hellos made by a rustls client with random settings (SNI name, ALPN,
//! TLS versions, a client certificate or not), re-fragmented into several records at random
//! points, grown past rustls's 64 KiB handshake-message limit now and then, and mutated with the
//! framing tests' mutations; plus random bytes with and without a TLS record header. Properties:
//!
//! - nothing panics;
//! - while the hello is read, the heap the connection holds (measured by a counting allocator,
//!   per thread) stays under [`HELD_LIMIT`];
//! - the same bytes cut into reads differently end the same way (the same error, or the same
//!   handshake state, SNI name and ALPN protocol);
//! - a valid hello, however fragmented, completes the handshake with its client: the server
//!   sees the SNI name the client sent, picks the ALPN protocol the configuration says (or
//!   refuses with `NoApplicationProtocol`), sees the client certificate if one was sent, and
//!   application data crosses both ways intact.
//!
//! Cases per property come from `PIER_PROPTEST_CASES`, as for the framing properties.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::{SniCert, TlsOptions, certgen, load_certs, load_key, load_roots, server_config};
use crate::net::framing::props::{
    Split, config, config_scaled, mutate, mutations, read_sizes, split,
};

// ----- Measuring what the connection holds -----

/// The system allocator, counting the bytes live on each thread so a property can see what a
/// connection allocates and keeps. Thread-local because the test harness runs tests in
/// parallel; the counters are `const`-initialised and have no destructor, so touching them
/// from inside the allocator never allocates.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts measuring: the peak is reset to what is live now, which is returned.
fn measure_from() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(live));
    live
}

/// The most bytes live above `base` since [`measure_from`].
fn peak_above(base: isize) -> usize {
    usize::try_from(PEAK.with(Cell::get) - base).unwrap_or(0)
}

/// Most heap a server connection may hold while reading a client hello. rustls refuses a
/// handshake message over 64 KiB, but holds one that size several times at once: joined in its
/// read buffer, in the transcript until the hash is chosen, and parsed (unknown extensions
/// are copied out). Measured: 248 KiB at most for hellos just under 64 KiB, nothing more for
/// larger ones; the fifth 64 KiB is the connection's own state and its first flight.
const HELD_LIMIT: usize = 5 * 64 * 1024;

// ----- The server under test and its clients -----

/// ALPN protocols the server offers, in its order of preference.
const SERVER_ALPN: &[&str] = &["pier", "http/1.1"];
/// The name the extra SNI certificate is for.
const SNI_NAME: &str = "sni.pier.test";

struct Fixture {
    server: Arc<ServerConfig>,
    /// Trusts both test CAs (the default certificate's and the SNI one's).
    roots: Arc<rustls::RootCertStore>,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pier-tls-props-{}", std::process::id()));
        let main = certgen::generate(
            &dir.join("main"),
            &["localhost".to_string(), "127.0.0.1".to_string()],
            2,
        )
        .expect("test certificates");
        let sni = certgen::generate(&dir.join("sni"), &[SNI_NAME.to_string()], 2)
            .expect("SNI test certificates");
        let options = TlsOptions {
            cert: main.server_cert.clone(),
            key: main.server_key.clone(),
            client_ca: Some(main.ca_cert.clone()),
            client_cert_optional: true,
            alpn: SERVER_ALPN.iter().map(|p| p.to_string()).collect(),
            handshake_timeout: Duration::from_secs(10),
            sni: vec![SniCert {
                name: SNI_NAME.to_string(),
                cert: sni.server_cert.clone(),
                key: sni.server_key.clone(),
            }],
        };
        let server = Arc::new(server_config(&options).expect("server config"));
        let mut roots = load_roots(&main.ca_cert).expect("CA");
        for cert in load_certs(&sni.ca_cert).expect("SNI CA") {
            roots.add(cert).expect("SNI CA");
        }
        let fixture = Fixture {
            server,
            roots: Arc::new(roots),
            client_chain: load_certs(&main.client_cert).expect("client certificate"),
            client_key: load_key(&main.client_key).expect("client key"),
        };
        let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
        fixture
    })
}

/// The name a client connects to.
#[derive(Debug, Clone)]
enum Name {
    /// Served by the default certificate.
    Localhost,
    /// Served by the SNI certificate.
    Sni,
    /// An IP address: no SNI extension is sent.
    Ip,
    /// A name no certificate is for: the server answers, the client refuses its certificate.
    Other(String),
}

impl Name {
    fn server_name(&self) -> ServerName<'static> {
        let name = match self {
            Name::Localhost => "localhost",
            Name::Sni => SNI_NAME,
            Name::Ip => "127.0.0.1",
            Name::Other(name) => name,
        };
        ServerName::try_from(name.to_string()).expect("valid name")
    }

    /// The SNI name the server should see.
    fn sni(&self) -> Option<String> {
        match self {
            Name::Localhost => Some("localhost".into()),
            Name::Sni => Some(SNI_NAME.into()),
            Name::Ip => None,
            Name::Other(name) => Some(name.clone()),
        }
    }
}

/// A client's settings.
#[derive(Debug, Clone)]
struct Hello {
    name: Name,
    alpn: Vec<&'static str>,
    /// 0: TLS 1.3 only, 1: TLS 1.2 only, 2: both.
    versions: u8,
    client_cert: bool,
}

fn hello() -> impl Strategy<Value = Hello> {
    let name = prop_oneof![
        3 => Just(Name::Localhost),
        2 => Just(Name::Sni),
        1 => Just(Name::Ip),
        1 => "[a-z]{1,12}\\.test".prop_map(Name::Other),
    ];
    (
        name,
        vec(select(&["pier", "http/1.1", "h2", "x"][..]), 0..3),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(name, mut alpn, versions, client_cert)| {
            alpn.dedup();
            Hello {
                name,
                alpn,
                versions,
                client_cert,
            }
        })
}

impl Hello {
    fn client(&self) -> ClientConnection {
        let fixture = fixture();
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            0 => &[&rustls::version::TLS13],
            1 => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(fixture.roots.clone());
        let mut config = if self.client_cert {
            builder
                .with_client_auth_cert(fixture.client_chain.clone(), fixture.client_key.clone_key())
                .expect("client certificate")
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        ClientConnection::new(Arc::new(config), self.name.server_name()).expect("client")
    }

    /// The ALPN protocol the server must pick: its first that the client offers. `Err` when
    /// the client offers protocols but none of the server's.
    fn expected_alpn(&self) -> Result<Option<String>, ()> {
        if self.alpn.is_empty() {
            return Ok(None);
        }
        SERVER_ALPN
            .iter()
            .find(|ours| self.alpn.contains(ours))
            .map(|p| Some(p.to_string()))
            .ok_or(())
    }
}

/// What a client sends first: its hello, as records.
fn first_flight(client: &mut ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("write to a Vec");
    }
    wire
}

// ----- Re-framing and growing a hello -----

const HANDSHAKE: u8 = 0x16;
/// Largest record payload (TLSPlaintext.length).
const MAX_RECORD: usize = 16_384;

/// The handshake bytes carried by a flight of handshake records.
fn handshake_bytes(flight: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = flight;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        out.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    out
}

/// `handshake` as handshake records, cut at `cuts` and wherever a record would be too long.
fn records(handshake: &[u8], cuts: &[Index]) -> Vec<u8> {
    let sizes = read_sizes(&Split::Cuts(cuts.to_vec()), handshake.len(), MAX_RECORD);
    let mut out = Vec::with_capacity(handshake.len() + 5 * sizes.len());
    let mut offset = 0;
    for n in sizes {
        out.extend_from_slice(&[HANDSHAKE, 3, 1]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&handshake[offset..offset + n]);
        offset += n;
    }
    out
}

/// The ClientHello message `hello` with an unknown (GREASE) extension of `pad` bytes and
/// `suites` extra GREASE cipher suites, lengths fixed up; `None` if a length field would
/// overflow. Used to reach rustls's 64 KiB handshake-message limit from both sides.
fn grow(hello: &[u8], pad: usize, suites: usize) -> Option<Vec<u8>> {
    let body = hello.get(4..)?;
    // version, random, session id
    let mut at = 2 + 32;
    at += 1 + usize::from(*body.get(at)?);
    let suites_at = at;
    let suites_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    at += 2 + suites_len;
    at += 1 + usize::from(*body.get(at)?);
    let ext_at = at;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
    let exts = body.get(ext_at + 2..ext_at + 2 + ext_len)?;

    let new_suites = u16::try_from(suites_len + 2 * suites).ok()?;
    let new_exts = u16::try_from(ext_len + 4 + pad).ok()?;
    let mut out = Vec::with_capacity(body.len() + 2 * suites + pad + 8);
    out.extend_from_slice(&body[..suites_at]);
    out.extend_from_slice(&new_suites.to_be_bytes());
    for _ in 0..suites {
        out.extend_from_slice(&[0x0a, 0x0a]);
    }
    out.extend_from_slice(&body[suites_at + 2..ext_at]);
    out.extend_from_slice(&new_exts.to_be_bytes());
    // The unknown extension goes first: TLS 1.3 wants `pre_shared_key` last.
    out.extend_from_slice(&[0x1a, 0x1a]);
    out.extend_from_slice(&u16::try_from(pad).ok()?.to_be_bytes());
    out.resize(out.len() + pad, 0);
    out.extend_from_slice(exts);

    let len = u32::try_from(out.len()).ok().filter(|&l| l < 1 << 24)?;
    let mut message = vec![hello[0]];
    message.extend_from_slice(&len.to_be_bytes()[1..]);
    message.extend_from_slice(&out);
    Some(message)
}

// ----- Driving the server -----

/// How feeding bytes to a server connection ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// The first error `read_tls` or `process_new_packets` returned.
    error: Option<String>,
    handshaking: bool,
    wants_write: bool,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// Feeds `input` to `server` in the reads `split` makes (64 KiB at most, as the connection
/// reads), checking the heap it holds; stops at the first error.
fn feed(
    server: &mut ServerConnection,
    input: &[u8],
    split: &Split,
) -> Result<Outcome, TestCaseError> {
    let base = measure_from();
    let mut error = None;
    let mut offset = 0;
    'reads: for n in read_sizes(split, input.len(), 64 * 1024) {
        let mut read = &input[offset..offset + n];
        offset += n;
        while !read.is_empty() {
            match server.read_tls(&mut read) {
                Ok(_) => {}
                Err(err) => {
                    error = Some(format!("read_tls: {err}"));
                    break 'reads;
                }
            }
            if let Err(err) = server.process_new_packets() {
                error = Some(format!("{err:?}"));
                break 'reads;
            }
            let held = peak_above(base);
            prop_assert!(held <= HELD_LIMIT, "{held} bytes held, limit {HELD_LIMIT}");
        }
    }
    Ok(Outcome {
        error,
        handshaking: server.is_handshaking(),
        wants_write: server.wants_write(),
        sni: server.server_name().map(str::to_string),
        alpn: server.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// A server connection for the test configuration, created inside the measured window.
fn server() -> ServerConnection {
    ServerConnection::new(fixture().server.clone()).expect("server connection")
}

/// Feeds `input` split three ways (`a`, `b`, largest reads) and requires one outcome.
fn same_outcome_however_split(input: &[u8], a: &Split, b: &Split) -> Result<(), TestCaseError> {
    let base = measure_from();
    let mut conn = server();
    let whole = feed(&mut conn, input, &Split::Cuts(Vec::new()))?;
    drop(conn);
    prop_assert!(peak_above(base) <= HELD_LIMIT);
    for split in [a, b] {
        let outcome = feed(&mut server(), input, split)?;
        prop_assert_eq!(&outcome, &whole, "split {:?} vs largest reads", split);
    }
    Ok(())
}

/// Moves everything either side has to send to the other until neither has anything, then
/// reports the first error (the server's, else the client's).
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), String> {
    for _ in 0..32 {
        let mut moved = false;
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).map_err(|e| e.to_string())?;
        }
        if !wire.is_empty() {
            moved = true;
            let mut read = &wire[..];
            while !read.is_empty() {
                server.read_tls(&mut read).map_err(|e| e.to_string())?;
                server
                    .process_new_packets()
                    .map_err(|e| format!("server: {e:?}"))?;
            }
        }
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).map_err(|e| e.to_string())?;
        }
        if !wire.is_empty() {
            moved = true;
            let mut read = &wire[..];
            while !read.is_empty() {
                client.read_tls(&mut read).map_err(|e| e.to_string())?;
                client
                    .process_new_packets()
                    .map_err(|e| format!("client: {e:?}"))?;
            }
        }
        if !moved {
            return Ok(());
        }
    }
    Err("handshake did not settle in 32 rounds".into())
}

/// Random bytes; random bytes behind a handshake record header; a hello (maybe fragmented or
/// grown) with mutations.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        1 => (0u16..=0x4800, vec(any::<u8>(), 0..300)).prop_map(|(len, body)| {
            let mut wire = vec![HANDSHAKE, 3, 1];
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend_from_slice(&body);
            wire
        }),
        6 => (
            hello(),
            vec(any::<Index>(), 0..6),
            prop_oneof![20 => Just((0usize, 0usize)), 1 => (60_000usize..65_500, 0usize..3000)],
            mutations(),
        )
            .prop_map(|(hello, cuts, (pad, suites), m)| {
                let handshake = handshake_bytes(&first_flight(&mut hello.client()));
                let handshake = if pad > 0 {
                    grow(&handshake, pad, suites).unwrap_or(handshake)
                } else {
                    handshake
                };
                let mut wire = records(&handshake, &cuts);
                mutate(&mut wire, &m);
                wire
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any client bytes: no panic, bounded heap, the same outcome however they are cut up.
    #[test]
    fn tls_any_client_hello_bytes(input in client_bytes(), a in split(), b in split()) {
        same_outcome_however_split(&input, &a, &b)?;
    }
}

proptest! {
    // Each case is two full handshakes' worth of public-key operations: a quarter of the cases.
    #![proptest_config(config_scaled(4))]

    /// A valid hello, re-fragmented into records and cut into reads at random, completes the
    /// handshake with its client, and data crosses both ways.
    #[test]
    fn tls_valid_hellos_complete_the_handshake(
        hello in hello(),
        cuts in vec(any::<Index>(), 0..6),
        a in split(),
        data in vec(any::<u8>(), 1..64),
    ) {
        let mut client = hello.client();
        let wire = records(&handshake_bytes(&first_flight(&mut client)), &cuts);
        let mut server = server();
        let fed = feed(&mut server, &wire, &a)?;
        let expected_alpn = hello.expected_alpn();
        if expected_alpn.is_err() {
            prop_assert_eq!(fed.error, Some(format!("{:?}", rustls::Error::NoApplicationProtocol)));
            return Ok(());
        }
        prop_assert_eq!(&fed.error, &None);
        prop_assert_eq!(&fed.sni, &hello.name.sni());
        let settled = pump(&mut client, &mut server);
        if let Name::Other(_) = hello.name {
            // The default certificate is not for this name: the client must refuse it.
            prop_assert!(settled.is_err(), "a certificate for the wrong name was accepted");
            return Ok(());
        }
        prop_assert_eq!(settled, Ok(()));
        prop_assert!(!server.is_handshaking() && !client.is_handshaking());
        let alpn = server.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        prop_assert_eq!(alpn, expected_alpn.unwrap());
        let identity = super::peer_identity(&server);
        prop_assert_eq!(identity.client_fingerprint.is_some(), hello.client_cert);

        std::io::Write::write_all(&mut client.writer(), &data).unwrap();
        std::io::Write::write_all(&mut server.writer(), &data).unwrap();
        prop_assert_eq!(pump(&mut client, &mut server), Ok(()));
        let mut got = vec![0; data.len()];
        server.reader().read_exact(&mut got).unwrap();
        prop_assert_eq!(&got, &data);
        client.reader().read_exact(&mut got).unwrap();
        prop_assert_eq!(&got, &data);
    }
}
