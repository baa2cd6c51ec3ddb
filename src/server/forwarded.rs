//! Which client a connection or request speaks for, as the per-address budget keys it.
//!
//! A peer in `--trusted-proxies` (nginx, a load balancer) opens connections on its clients'
//! behalf: the client is the right-most address of `X-Forwarded-For` that is not itself a
//! trusted proxy (each proxy appends the address it received the request from, so
//! everything left of that entry was written by the client and proves nothing), or, without
//! `X-Forwarded-For`, `X-Real-IP`. Any other peer is its own client, and its forwarding
//! headers are ignored: anyone can send them.
//!
//! A client whose address is itself trusted (a proxy's own request such as a health check,
//! or a request that named no client) is not budgeted: there is no one else to key it on,
//! and keying it on the proxy would make every client behind that proxy share one budget.
//!
//! Addresses are grouped before keying: IPv4 (and IPv4-mapped IPv6) by address, IPv6 by its
//! /64, the smallest network a single IPv6 host is normally given.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use axum::http::{HeaderMap, header::HeaderName};
use ipnet::IpNet;

/// `--trusted-proxies` when not set: loopback and the private ranges, where a proxy in front
/// of the router normally sits (the shipped nginx config reaches the routers over
/// loopback). A client cannot appear from these addresses across the Internet.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The networks whose forwarding headers are believed (`--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma- or space-separated list of CIDRs or single addresses; empty or `none` for
    /// no trusted proxy.
    fn from_str(list: &str) -> Result<TrustedProxies, String> {
        if list.trim().eq_ignore_ascii_case("none") {
            return Ok(TrustedProxies::default());
        }
        list.split([',', ' '])
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{entry}` is not a CIDR (10.0.0.0/8) or an address"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl std::fmt::Display for TrustedProxies {
    /// As the flag takes it: comma-separated, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

/// Who a request from `peer` (a trusted proxy) was made by: `Some` client address, or
/// `None` when no untrusted client is named (no header, every entry trusted, or an entry
/// that is not an address, where the chain can no longer be followed).
pub fn forwarded_client(trusted: &TrustedProxies, headers: &HeaderMap) -> Option<IpAddr> {
    let mut forwarded = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if forwarded.peek().is_some() {
        // Several header lines are one list, in order.
        let lines: Vec<_> = forwarded.collect();
        // Split as bytes: the client writes the start of the line, and bytes of its that
        // are not ASCII must not hide the entries the proxies appended after them.
        for entry in lines.iter().rev().flat_map(|line| line.as_bytes().rsplit(|&byte| byte == b',')) {
            let ip = parse_entry(std::str::from_utf8(entry).ok()?.trim())?;
            if !trusted.contains(ip) {
                return Some(ip.to_canonical());
            }
        }
        return None;
    }
    let ip = parse_entry(headers.get(&X_REAL_IP)?.to_str().ok()?.trim())?;
    (!trusted.contains(ip)).then(|| ip.to_canonical())
}

/// Whether a request carries a forwarding header (worth a warning from an untrusted peer:
/// a proxy missing from `--trusted-proxies` makes its clients share one budget).
pub fn has_forwarding_headers(headers: &HeaderMap) -> bool {
    headers.contains_key(&X_FORWARDED_FOR) || headers.contains_key(&X_REAL_IP)
}

/// An address as proxies write it: bare, or with a port (`192.0.2.1:443`, `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    IpAddr::from_str(entry).ok().or_else(|| SocketAddr::from_str(entry).ok().map(|addr| addr.ip()))
}

/// The budget's key for a client address: IPv4 as is (IPv4-mapped IPv6 as IPv4), IPv6 with
/// everything past its /64 cleared.
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn trusted_proxies_parse_cidrs_addresses_and_none() {
        let list: TrustedProxies = "10.0.0.0/8, 192.0.2.7,2001:db8::/32".parse().unwrap();
        assert!(list.contains(ip("10.1.2.3")) && list.contains(ip("192.0.2.7")) && list.contains(ip("2001:db8::9")));
        assert!(!list.contains(ip("192.0.2.8")) && !list.contains(ip("11.0.0.1")));
        assert!(list.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped peers of a dual-stack listener");
        assert_eq!("none".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
        assert_eq!("".parse::<TrustedProxies>().unwrap().to_string(), "none");
        assert_eq!("10.1.2.3/8,::1".parse::<TrustedProxies>().unwrap().to_string(), "10.0.0.0/8,::1/128");
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nginx".parse::<TrustedProxies>().unwrap_err().contains("`nginx`"));
        let default: TrustedProxies = DEFAULT_TRUSTED_PROXIES.parse().unwrap();
        assert_eq!(default.to_string(), DEFAULT_TRUSTED_PROXIES);
        for inside in ["127.0.0.1", "::1", "10.9.9.9", "172.31.0.1", "192.168.1.1", "fd00::1"] {
            assert!(default.contains(ip(inside)), "{inside}");
        }
        for outside in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1"] {
            assert!(!default.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let client = |pairs: &[(&'static str, &str)]| forwarded_client(&trusted, &headers(pairs));
        assert_eq!(client(&[("x-forwarded-for", "198.51.100.7")]), Some(ip("198.51.100.7")));
        // What the client wrote itself is left of what the proxies appended.
        assert_eq!(client(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7")]), Some(ip("198.51.100.7")));
        assert_eq!(client(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.2")]), Some(ip("198.51.100.7")));
        // Several header lines are one list.
        let lines = [("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "198.51.100.7, 10.0.0.2")];
        assert_eq!(client(&lines), Some(ip("198.51.100.7")));
        assert_eq!(client(&[("x-forwarded-for", "[2001:db8::5]:443")]), Some(ip("2001:db8::5")));
        assert_eq!(client(&[("x-forwarded-for", "198.51.100.7:5000")]), Some(ip("198.51.100.7")));
        // X-Forwarded-For wins over X-Real-IP; X-Real-IP alone is used.
        let both = [("x-real-ip", "203.0.113.1"), ("x-forwarded-for", "198.51.100.7")];
        assert_eq!(client(&both), Some(ip("198.51.100.7")));
        assert_eq!(client(&[("x-real-ip", "203.0.113.1")]), Some(ip("203.0.113.1")));
        // No client named: no header, every entry trusted, or an entry that is no address.
        assert_eq!(client(&[]), None);
        assert_eq!(client(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]), None);
        assert_eq!(client(&[("x-forwarded-for", "198.51.100.7, unknown")]), None);
        // Bytes that are not ASCII, left of what the proxy appended, hide nothing.
        let written = HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap();
        let mut map = HeaderMap::new();
        map.append("x-forwarded-for", written);
        assert_eq!(forwarded_client(&trusted, &map), Some(ip("198.51.100.7")));
        map.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(forwarded_client(&trusted, &map), None, "nothing to follow right of them");
        assert_eq!(client(&[("x-real-ip", "10.0.0.3")]), None);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        assert_eq!(budget_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), ip("2001:db8:1:2::"));
        assert_ne!(budget_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(budget_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
