//! The PROXY protocol (HAProxy's, v1 text and v2 binary): a load balancer in front of pier says
//! who the client really is in a header before the client's first byte.
//!
//! A door with `proxy_protocol` set accepts connections only from the addresses in `proxy_from`
//! (the load balancers); the accept loop refuses everyone else. The header is read in the
//! connection's task, under the door's timeout, before TLS and before the per-address admission
//! limits — which then apply to the address from the header, as do the plugin's
//! `peer.remote-addr`, logs and `/connections`. The `ppp` crate parses the header; this module
//! only reads exactly its bytes off the socket, never one more: what follows belongs to TLS or to
//! the framing.
//!
//! A v2 `LOCAL` command (the balancer's own health check) and v1 `UNKNOWN` keep the socket's
//! address. v2 TLVs are skipped: the TLS the balancer terminated is its business, and pier's own
//! TLS identity comes from pier's handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 header's fixed signature (12 bytes), of which the first five tell it from v1's `PROXY`.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The largest v2 address-and-TLV block accepted (the format allows 64 KiB; a balancer sends
/// addresses and a few small TLVs).
pub const V2_MAX_BODY: usize = 4 * 1024;
/// Default time for the header to arrive.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which header versions a door accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`), HAProxy's `send-proxy`.
    V1,
    /// The binary header, HAProxy's `send-proxy-v2`.
    V2,
    /// Either.
    Any,
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            "any" => Ok(ProxyVersion::Any),
            other => Err(format!(
                "unknown proxy_protocol `{other}` (expected v1, v2 or any)"
            )),
        }
    }
}

/// A door's PROXY protocol settings (pier.toml `proxy_protocol`, `proxy_from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// The versions accepted.
    pub version: ProxyVersion,
    /// The load balancers trusted to send the header; connections from elsewhere are refused.
    pub from: Vec<ipnet::IpNet>,
    /// Longest the header may take to arrive.
    pub timeout: Duration,
}

impl ProxySettings {
    /// Whether `ip` is one of the trusted load balancers (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.from.iter().any(|net| net.contains(&ip))
    }
}

/// Why a connection's PROXY header was refused; the names are the metric's `reason` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// Not from an address in `proxy_from`.
    Untrusted,
    /// The first bytes are not a PROXY header (or the client closed before sending one).
    Missing,
    /// A header that does not parse, or of a version the door does not accept.
    Malformed,
    /// Not complete within the timeout.
    Timeout,
    /// A v2 header longer than [`V2_MAX_BODY`].
    TooLarge,
}

impl ProxyRefusal {
    /// Every reason's name, for the counters.
    pub const NAMES: &'static [&'static str] =
        &["untrusted", "missing", "malformed", "timeout", "too-large"];

    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Reads the PROXY header off `stream`: the client's address, or `None` when the balancer speaks
/// for itself (v2 `LOCAL`, v1 `UNKNOWN`). Exactly the header's bytes are consumed.
pub async fn read_header(
    stream: &mut TcpStream,
    settings: &ProxySettings,
) -> Result<Option<SocketAddr>, (ProxyRefusal, String)> {
    match tokio::time::timeout(settings.timeout, read(stream, settings.version)).await {
        Ok(result) => result,
        Err(_) => Err((
            ProxyRefusal::Timeout,
            format!("no complete PROXY header within {:?}", settings.timeout),
        )),
    }
}

async fn read(
    stream: &mut TcpStream,
    version: ProxyVersion,
) -> Result<Option<SocketAddr>, (ProxyRefusal, String)> {
    let missing = |what: &str| (ProxyRefusal::Missing, what.to_string());
    let malformed = |what: String| (ProxyRefusal::Malformed, what);
    // Both headers are longer than five bytes, and five tell them apart.
    let mut head = Vec::with_capacity(V1_MAX);
    head.resize(5, 0);
    stream
        .read_exact(&mut head)
        .await
        .map_err(|_| missing("closed before a PROXY header"))?;
    if head == b"PROXY" {
        if version == ProxyVersion::V2 {
            return Err(malformed("a v1 header where v2 is expected".into()));
        }
        read_v1_line(stream, &mut head).await?;
        let text =
            std::str::from_utf8(&head).map_err(|_| malformed("v1 header is not text".into()))?;
        let header =
            ppp::v1::Header::try_from(text).map_err(|e| malformed(format!("v1 header: {e}")))?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if head[..] != V2_SIGNATURE[..5] {
        return Err(missing("the first bytes are not a PROXY header"));
    }
    if version == ProxyVersion::V1 {
        return Err(malformed("a v2 header where v1 is expected".into()));
    }
    head.resize(16, 0);
    stream
        .read_exact(&mut head[5..])
        .await
        .map_err(|_| missing("closed inside the PROXY header"))?;
    let body = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if body > V2_MAX_BODY {
        return Err((
            ProxyRefusal::TooLarge,
            format!("v2 header of {body} bytes, above {V2_MAX_BODY}"),
        ));
    }
    head.resize(16 + body, 0);
    stream
        .read_exact(&mut head[16..])
        .await
        .map_err(|_| missing("closed inside the PROXY header"))?;
    let header =
        ppp::v2::Header::try_from(&head[..]).map_err(|e| malformed(format!("v2 header: {e}")))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    })
}

/// Reads the rest of a v1 line after `PROXY`, up to and including its `\n`. The balancer sends
/// the header in one segment, so one peek normally finds the whole line and one read takes it;
/// a line still arriving is read a byte at a time (at most [`V1_MAX`]).
async fn read_v1_line(
    stream: &mut TcpStream,
    line: &mut Vec<u8>,
) -> Result<(), (ProxyRefusal, String)> {
    let too_long = || {
        (
            ProxyRefusal::Malformed,
            format!("v1 header longer than {V1_MAX} bytes"),
        )
    };
    let closed = || {
        (
            ProxyRefusal::Missing,
            "closed inside the PROXY header".to_string(),
        )
    };
    let mut peeked = [0u8; V1_MAX];
    let room = V1_MAX - line.len();
    let n = stream
        .peek(&mut peeked[..room])
        .await
        .map_err(|_| closed())?;
    if let Some(end) = peeked[..n].iter().position(|b| *b == b'\n') {
        let start = line.len();
        line.resize(start + end + 1, 0);
        stream
            .read_exact(&mut line[start..])
            .await
            .map_err(|_| closed())?;
        return Ok(());
    }
    while line.last() != Some(&b'\n') {
        if line.len() >= V1_MAX {
            return Err(too_long());
        }
        let byte = stream.read_u8().await.map_err(|_| closed())?;
        line.push(byte);
    }
    Ok(())
}
