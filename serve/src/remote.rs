//! `--allow-remote-urls`: fetching an image from an http(s) URL without letting clients reach what
//! the server can reach and they cannot (an SSRF guard).
//!
//! - Every address a host name resolves to is checked before connecting, and the connection goes to
//!   an address that was checked: the check is a ureq [`Resolver`], so there is no second resolution
//!   for a DNS server to answer differently (DNS rebinding).
//! - Redirects are followed here, not by ureq (at most [`MAX_REDIRECTS`]), so each hop goes through
//!   the same resolver and check.
//! - Refused unless `--allow-private-urls`: loopback, private (RFC 1918, IPv6 unique local),
//!   link-local, CGNAT (100.64/10), multicast, unspecified, broadcast and reserved, documentation and
//!   benchmark ranges; IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are
//!   judged by that address; Teredo is refused (its embedded addresses are not checkable).
//! - The client hears "could not fetch the image" whatever went wrong (refused address, connection
//!   refused, timeout, HTTP status): a different answer for each would map the server's network. The
//!   reason goes to the server's stderr.
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use ureq::Resolver;

/// Redirects followed for one image.
pub const MAX_REDIRECTS: usize = 5;

/// The address class that makes `ip` unreachable for clients, or `None` for a public address.
pub fn blocked_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (127, ..) => "loopback",
        (10, ..) => "private (10/8)",
        (172, 16..=31, _) => "private (172.16/12)",
        (192, 168, _) => "private (192.168/16)",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "CGNAT (100.64/10)",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved or broadcast (240/4)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking (198.18/15)",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated), 64:ff9b::a.b.c.d (NAT64): the
    // IPv4 address is where the packets go.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return blocked_v4(embedded_v4(s[6], s[7])).or(if s[5] == 0 { Some("IPv4-compatible") } else { None });
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(embedded_v4(s[6], s[7]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "private (unique local fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x2001 if s[1] == 0 => "Teredo (2001::/32)",
        0x2002 => return blocked_v4(embedded_v4(s[1], s[2])),
        0x0100 if s[1..4] == [0, 0, 0] => "discard (100::/64)",
        _ => return None,
    })
}

/// The resolver ureq connects through: resolves, then refuses the host if any of its addresses is
/// blocked (a name with one public and one private address is refused: ureq could pick either).
struct Guard {
    allow_private: bool,
    /// Test hook: addresses let through whatever their class (a local redirecting server).
    #[cfg(test)]
    exempt: Vec<SocketAddr>,
}

impl Guard {
    fn check(&self, addr: SocketAddr) -> io::Result<()> {
        #[cfg(test)]
        if self.exempt.contains(&addr) {
            return Ok(());
        }
        match blocked_class(addr.ip()) {
            Some(class) if !self.allow_private => Err(io::Error::other(Refusal(format!(
                "{addr} is {class}: refused (--allow-private-urls allows it)"
            )))),
            _ => Ok(()),
        }
    }
}

/// The guard's refusal, told apart from a connection error by its type.
#[derive(Debug)]
struct Refusal(String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl Resolver for Guard {
    fn resolve(&self, netloc: &str) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{netloc} has no address"),
            ));
        }
        for a in &addrs {
            self.check(*a)?;
        }
        Ok(addrs)
    }
}

/// Why a fetch failed (for the server's log; the client hears one sentence).
#[derive(Debug)]
pub enum FetchError {
    /// The guard refused an address (at the first hop or at a redirect).
    Refused(String),
    /// Anything else: DNS, connection, TLS, timeout, HTTP status, too many redirects, too large.
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Refused(m) | FetchError::Failed(m) => f.write_str(m),
        }
    }
}

/// How a fetch may go.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    pub allow_private: bool,
    /// For the whole fetch, redirects included.
    pub timeout: Duration,
    pub max_bytes: u64,
}

/// Downloads `url` under `policy` (blocking): at most `max_bytes`, every hop checked.
pub fn fetch(url: &str, policy: &FetchPolicy) -> Result<Vec<u8>, FetchError> {
    fetch_with(
        url,
        policy,
        Guard {
            allow_private: policy.allow_private,
            #[cfg(test)]
            exempt: Vec::new(),
        },
    )
}

fn fetch_with(url: &str, policy: &FetchPolicy, guard: Guard) -> Result<Vec<u8>, FetchError> {
    let failed = |m: String| FetchError::Failed(m);
    let agent = ureq::AgentBuilder::new().resolver(guard).redirects(0).build();
    let deadline = Instant::now() + policy.timeout;
    let mut current = url::Url::parse(url).map_err(|e| failed(format!("{url}: {e}")))?;
    for hop in 0..=MAX_REDIRECTS {
        if !matches!(current.scheme(), "http" | "https") {
            return Err(failed(format!("redirected to {current}: not http(s)")));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(format!("{url}: timed out after {:?}", policy.timeout)));
        }
        let resp = match agent.request_url("GET", &current).timeout(left).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => return Err(failed(format!("{current}: HTTP {code}"))),
            Err(ureq::Error::Transport(t)) => {
                // The guard's refusal travels inside the io::Error the resolver returned.
                let refused = std::error::Error::source(&t)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .and_then(|e| e.get_ref())
                    .is_some_and(|e| e.is::<Refusal>());
                let m = format!("{current}: {t}");
                return Err(if refused { FetchError::Refused(m) } else { failed(m) });
            }
        };
        if (300..400).contains(&resp.status()) {
            let location = resp
                .header("location")
                .ok_or_else(|| failed(format!("{current}: HTTP {} without a Location", resp.status())))?;
            let next = current
                .join(location)
                .map_err(|e| failed(format!("{current}: bad redirect {location:?}: {e}")))?;
            if hop == MAX_REDIRECTS {
                return Err(failed(format!("{url}: more than {MAX_REDIRECTS} redirects")));
            }
            current = next;
            continue;
        }
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(policy.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| failed(format!("reading {current}: {e}")))?;
        if bytes.len() as u64 > policy.max_bytes {
            return Err(failed(format!(
                "{current} is larger than the limit of {} bytes",
                policy.max_bytes
            )));
        }
        return Ok(bytes);
    }
    Err(failed(format!("{url}: more than {MAX_REDIRECTS} redirects")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// One address of each class, and whether it is public.
    const TABLE: &[(&str, bool)] = &[
        ("127.0.0.1", false),
        ("127.8.9.10", false),
        ("0.0.0.0", false),
        ("10.1.2.3", false),
        ("172.16.0.1", false),
        ("172.31.255.254", false),
        ("192.168.1.1", false),
        ("169.254.169.254", false), // cloud metadata
        ("100.64.0.1", false),
        ("100.127.255.1", false),
        ("224.0.0.1", false),
        ("255.255.255.255", false),
        ("192.0.2.1", false),
        ("198.51.100.1", false),
        ("203.0.113.1", false),
        ("198.18.0.1", false),
        ("::1", false),
        ("::", false),
        ("::ffff:127.0.0.1", false),
        ("::ffff:10.0.0.1", false),
        ("::ffff:169.254.169.254", false),
        ("::127.0.0.1", false),
        ("64:ff9b::a9fe:a9fe", false),
        ("2002:c0a8:0101::1", false),
        ("fd00::1", false),
        ("fe80::1", false),
        ("fec0::1", false),
        ("ff02::1", false),
        ("2001:db8::1", false),
        ("2001:0:4136:e378::1", false),
        ("100::1", false),
        ("8.8.8.8", true),
        ("172.32.0.1", true),
        ("100.128.0.1", true),
        ("2606:4700::1111", true),
        ("::ffff:8.8.8.8", true),
        ("64:ff9b::808:808", true),
    ];

    #[test]
    fn address_classes() {
        for &(a, public) in TABLE {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(blocked_class(ip).is_none(), public, "{a}: {:?}", blocked_class(ip));
        }
    }

    fn host(a: &str) -> String {
        if a.contains(':') {
            format!("[{a}]")
        } else {
            a.to_owned()
        }
    }

    /// A server on 127.0.0.1 that answers every connection with `answer(path)`; runs until the test ends.
    fn local_server(answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split(' ').nth(1).unwrap_or("/").to_owned();
                let _ = c.write_all(&answer(&path));
            }
        });
        addr
    }

    fn image_server() -> SocketAddr {
        local_server(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nimage".to_vec())
    }

    /// Redirects `/to/URL` to URL.
    fn redirector() -> SocketAddr {
        local_server(|path| {
            let target = path.strip_prefix("/to/").unwrap_or("");
            format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        })
    }

    fn policy(allow_private: bool) -> FetchPolicy {
        FetchPolicy {
            allow_private,
            timeout: Duration::from_millis(300),
            max_bytes: 1 << 20,
        }
    }

    fn guard(allow_private: bool, exempt: Vec<SocketAddr>) -> Guard {
        Guard { allow_private, exempt }
    }

    /// The SSRF table: every blocked class, directly and through a redirect from 127.0.0.1, refused
    /// by default; with --allow-private-urls the guard lets it through (the fetch then succeeds for
    /// our loopback image server and fails to connect elsewhere: nothing listens at those addresses).
    #[test]
    fn ssrf_table_direct_and_through_redirects() {
        let img = image_server();
        let redir = redirector();
        let port = img.port();
        let rows: Vec<_> = TABLE.iter().filter(|(_, public)| !public).collect();
        std::thread::scope(|sc| {
            for &&(a, _) in &rows {
                sc.spawn(move || {
                    let target = format!("http://{}:{port}/x.png", host(a));
                    let via = format!("http://{redir}/to/{target}");
                    for (url, how) in [(&target, "directly"), (&via, "through a redirect")] {
                        let exempt = vec![redir];
                        let r = fetch_with(url, &policy(false), guard(false, exempt.clone()));
                        assert!(matches!(r, Err(FetchError::Refused(_))), "{a} {how}: {r:?}");
                        let r = fetch_with(url, &policy(true), guard(true, exempt));
                        assert!(
                            !matches!(r, Err(FetchError::Refused(_))),
                            "{a} {how} with the flag: {r:?}"
                        );
                        if a == "127.0.0.1" {
                            assert_eq!(r.unwrap(), b"image", "{a} {how} with the flag");
                        }
                    }
                });
            }
        });
        // Names: localhost resolves without DNS (the hosts file) and is refused like its address.
        let url = format!("http://localhost:{port}/x.png");
        assert!(matches!(fetch(&url, &policy(false)), Err(FetchError::Refused(_))));
        assert_eq!(fetch(&url, &policy(true)).unwrap(), b"image");
    }

    #[test]
    fn redirects_are_bounded_and_sizes_limited() {
        // A redirect loop on an exempted server: the count stops it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    format!("HTTP/1.1 302 Found\r\nLocation: http://{addr}/again\r\nContent-Length: 0\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        let r = fetch_with(&format!("http://{addr}/"), &policy(false), guard(false, vec![addr]));
        assert!(
            matches!(&r, Err(FetchError::Failed(m)) if m.contains("redirects")),
            "{r:?}"
        );
        let img = image_server();
        let mut p = policy(true);
        p.max_bytes = 4;
        let r = fetch(&format!("http://{img}/"), &p);
        assert!(
            matches!(&r, Err(FetchError::Failed(m)) if m.contains("larger")),
            "{r:?}"
        );
        let r = fetch_with(&format!("http://{img}/"), &policy(true), guard(true, vec![]));
        assert_eq!(r.unwrap(), b"image");
    }
}
