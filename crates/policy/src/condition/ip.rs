//! CIDR blocks for `IpAddress` / `NotIpAddress`, IPv4 and IPv6.
//!
//! A policy value without a prefix length is a single host (`/32` or `/128`). Host bits
//! set below the prefix (`203.0.113.7/24`) are ignored. A request address that is an
//! IPv4-mapped IPv6 address (`::ffff:203.0.113.7`, as dual-stack sockets report IPv4
//! peers) also matches the IPv4 block it maps to.

use std::net::IpAddr;

/// An address block from a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `203.0.113.0/24`, `2001:DB8::/32`, `10.0.0.1`; `None` otherwise.
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (a, Some(p.parse::<u8>().ok()?))
            }
            None => (text, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    /// Whether `addr` (or the IPv4 address it maps, if any) lies in this block.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        let mapped = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.contains_exact(addr) || mapped.is_some_and(|a| self.contains_exact(a))
    }

    fn contains_exact(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4() {
        let c = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(c.contains(ip("203.0.113.0")));
        assert!(c.contains(ip("203.0.113.255")));
        assert!(!c.contains(ip("203.0.114.0")));
        assert!(c.contains(ip("::ffff:203.0.113.9")));
        let host = Cidr::parse("10.1.2.3").unwrap();
        assert!(host.contains(ip("10.1.2.3")));
        assert!(!host.contains(ip("10.1.2.4")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("2001:db8::1")));
        assert!(Cidr::parse("203.0.113.7/24")
            .unwrap()
            .contains(ip("203.0.113.200")));
    }

    #[test]
    fn v6() {
        let c = Cidr::parse("2001:DB8:1234:5678::/64").unwrap();
        assert!(c.contains(ip("2001:db8:1234:5678:ffff::1")));
        assert!(!c.contains(ip("2001:db8:1234:5679::1")));
        assert!(!c.contains(ip("203.0.113.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "203.0.113.0/33",
            "2001:db8::/129",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113/24",
            "host.example",
            "10.0.0.0/8/8",
            "${aws:SourceIp}",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad:?}");
        }
    }
}
