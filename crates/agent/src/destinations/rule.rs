//! One destination rule, `CIDR:PORTS`, as an operator writes it on `airlock agent run
//! --allow-destination/--deny-destination` or in the agent's state file. The parser is strict:
//! a rule it cannot read exactly is refused with the reason, never guessed at, because a
//! misread deny rule is an open door.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest rule text accepted (a CIDR and a port list fit easily).
pub const MAX_RULE_LEN: usize = 256;
/// Most port items (`22`, `8000-8100`) in one rule.
pub const MAX_PORT_ITEMS: usize = 64;

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination rule {rule:?}: {why}")]
pub struct RuleError {
    /// The rule as given (cut to a readable length).
    pub rule: String,
    /// What is wrong with it.
    pub why: String,
}

fn err(rule: &str, why: impl Into<String>) -> RuleError {
    let shown: String = rule.chars().take(80).collect();
    RuleError {
        rule: if shown.len() < rule.len() {
            format!("{shown}…")
        } else {
            shown
        },
        why: why.into(),
    }
}

/// An address range: the network address (host bits zero) and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `addr/prefix`; `None` when the prefix is too long for the family or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Net> {
        let n = Net { addr, prefix };
        if prefix > n.max_prefix() || n.masked(addr) != addr {
            return None;
        }
        Some(n.to_v4_if_mapped())
    }

    /// The range of one address.
    pub fn host(addr: IpAddr) -> Net {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Net { addr, prefix }.to_v4_if_mapped()
    }

    fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// `::ffff:a.b.c.d/96+n` is the IPv4 range `a.b.c.d/n`: the same hosts.
    fn to_v4_if_mapped(self) -> Net {
        if let IpAddr::V6(v6) = self.addr {
            if self.prefix >= 96 {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Net {
                        addr: IpAddr::V4(v4),
                        prefix: self.prefix - 96,
                    };
                }
            }
        }
        self
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// Whether `ip` lies in the range (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }

    /// Whether every address of `self` lies in `outer`.
    pub fn within(&self, outer: &Net) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.addr)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ports a rule covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// `*`: every port.
    Any,
    /// Inclusive ranges (a single port is a range of one).
    List(Vec<(u16, u16)>),
}

impl Ports {
    /// Whether `port` is covered.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(l) => l.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ports::Any => f.write_str("*"),
            Ports::List(l) => {
                for (i, (lo, hi)) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if lo == hi {
                        write!(f, "{lo}")?;
                    } else {
                        write!(f, "{lo}-{hi}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// One rule: a range of addresses and the ports on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The addresses.
    pub net: Net,
    /// The ports.
    pub ports: Ports,
}

impl Rule {
    /// Whether the rule covers `ip` on `port`.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.ports.contains(port) && self.net.contains(ip)
    }

    /// Parses `CIDR:PORTS`: `10.0.0.0/8:5432`, `192.0.2.7:80,443`, `[::1]:8000-8100`,
    /// `fe80::/10:*`. A bare address is one host. An IPv6 address without a prefix length must
    /// be bracketed (`fd00:ec2::254:80` could be read two ways, so it is refused).
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(err(text, "empty; write CIDR:PORTS, e.g. 10.0.0.0/8:5432"));
        }
        if t.len() > MAX_RULE_LEN {
            return Err(err(text, format!("longer than {MAX_RULE_LEN} characters")));
        }
        let (addr_part, ports_part) = if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| err(text, "an opening [ without its ]"))?;
            let ports = after
                .strip_prefix(':')
                .ok_or_else(|| err(text, "the ports are missing; write [ADDRESS]:PORTS"))?;
            (inside.to_owned(), ports)
        } else {
            let (a, p) = t.rsplit_once(':').ok_or_else(|| {
                err(
                    text,
                    "the ports are missing; write CIDR:PORTS, e.g. 10.0.0.0/8:* or [::1]:22",
                )
            })?;
            if a.contains(':') && !a.contains('/') {
                return Err(err(
                    text,
                    "write an IPv6 address in brackets ([fd00::1]:80) or with a prefix length (fd00::1/128:80)",
                ));
            }
            (a.to_owned(), p)
        };
        let net = parse_net(text, &addr_part)?;
        let ports = parse_ports(text, ports_part)?;
        Ok(Rule { net, ports })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.net.addr.is_ipv6() {
            write!(f, "[{}]:{}", self.net, self.ports)
        } else {
            write!(f, "{}:{}", self.net, self.ports)
        }
    }
}

fn parse_net(text: &str, s: &str) -> Result<Net, RuleError> {
    let (ip_s, prefix_s) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    // Only the plain forms: `Ipv4Addr`'s parser refuses octal, hex and shortened forms, so a
    // rule always means what it looks like.
    let ip: IpAddr = ip_s.parse().map_err(|_| {
        err(
            text,
            format!(
                "{ip_s:?} is not an IPv4 or IPv6 address (host names are not allowed in rules)"
            ),
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_s {
        None => max,
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(text, format!("prefix length {p:?} is not a number")));
            }
            let n: u8 = p
                .parse()
                .map_err(|_| err(text, format!("prefix length {p:?} is not a number")))?;
            if n > max {
                return Err(err(
                    text,
                    format!("prefix length /{n} is longer than the {max} bits of the address"),
                ));
            }
            n
        }
    };
    Net::new(ip, prefix).ok_or_else(|| {
        let canonical = Net { addr: ip, prefix };
        err(
            text,
            format!(
                "{ip}/{prefix} has bits set past the prefix; did you mean {}?",
                Net {
                    addr: canonical.masked(ip),
                    prefix
                }
            ),
        )
    })
}

fn parse_port(text: &str, s: &str) -> Result<u16, RuleError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(text, format!("{s:?} is not a port number")));
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(err(text, format!("port {s} is not from 1 to 65535"))),
    }
}

fn parse_ports(text: &str, s: &str) -> Result<Ports, RuleError> {
    let s = s.trim();
    if s == "*" {
        return Ok(Ports::Any);
    }
    if s.is_empty() {
        return Err(err(
            text,
            "no ports; write a port, a list (80,443), a range (8000-8100) or *",
        ));
    }
    let items: Vec<&str> = s.split(',').collect();
    if items.len() > MAX_PORT_ITEMS {
        return Err(err(text, format!("more than {MAX_PORT_ITEMS} port items")));
    }
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        let item = item.trim();
        let range = match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (parse_port(text, lo.trim())?, parse_port(text, hi.trim())?);
                if lo > hi {
                    return Err(err(text, format!("port range {item} runs backwards")));
                }
                (lo, hi)
            }
            None => {
                let p = parse_port(text, item)?;
                (p, p)
            }
        };
        list.push(range);
    }
    Ok(Ports::List(list))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        Rule::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn reads_the_documented_forms() {
        assert_eq!(ok("10.0.0.0/8:5432"), "10.0.0.0/8:5432");
        assert_eq!(ok("192.0.2.7:80,443"), "192.0.2.7/32:80,443");
        assert_eq!(ok("127.0.0.1:8000-8100"), "127.0.0.1/32:8000-8100");
        assert_eq!(ok("0.0.0.0/0:*"), "0.0.0.0/0:*");
        assert_eq!(ok("fe80::/10:*"), "[fe80::/10]:*");
        assert_eq!(ok("[::1]:22"), "[::1/128]:22");
        assert_eq!(ok("[fd00:ec2::254]:80"), "[fd00:ec2::254/128]:80");
        assert_eq!(ok("[fd00::/8]:1-65535"), "[fd00::/8]:1-65535");
        assert_eq!(ok("  10.1.2.3:22 , 80 "), "10.1.2.3/32:22,80");
        // A mapped IPv6 rule means the IPv4 hosts it names.
        assert_eq!(ok("[::ffff:169.254.0.0/112]:*"), "169.254.0.0/16:*");
        assert_eq!(ok("[::ffff:169.254.169.254]:80"), "169.254.169.254/32:80");
    }

    #[test]
    fn hostile_rules_are_refused_with_a_reason() {
        let long = format!("10.0.0.0/8:{}", "1,".repeat(100_000));
        let many = format!("10.0.0.0/8:{}", vec!["1"; MAX_PORT_ITEMS + 1].join(","));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("10.0.0.0/33:22", "longer than the 32 bits"),
            ("::/129:22", "longer than the 128 bits"),
            ("10.0.0.0/-1:22", "not a number"),
            ("10.0.0.0/:22", "not a number"),
            ("10.0.0.0/0008:22", "not a number"),
            ("10.0.0.0/999999999999:22", "not a number"),
            ("999.1.1.1:22", "not an IPv4 or IPv6 address"),
            ("1.2.3:22", "not an IPv4 or IPv6 address"),
            ("0xa9fea9fe:80", "not an IPv4 or IPv6 address"),
            ("2852039166:80", "not an IPv4 or IPv6 address"),
            ("0251.0376.0251.0376:80", "not an IPv4 or IPv6 address"),
            ("metadata.google.internal:80", "host names are not allowed"),
            ("10.0.0.0/8", "ports are missing"),
            ("10.0.0.0/8:", "no ports"),
            ("10.0.0.0/8:70000", "not from 1 to 65535"),
            ("10.0.0.0/8:0", "not from 1 to 65535"),
            ("10.0.0.0/8:65536", "not from 1 to 65535"),
            ("10.0.0.0/8:999999", "not a port number"),
            ("10.0.0.0/8:-5", "not a port number"),
            ("10.0.0.0/8:+5", "not a port number"),
            ("10.0.0.0/8:22,", "not a port number"),
            ("10.0.0.0/8:9000-8000", "runs backwards"),
            ("10.0.0.0/8:1-2-3", "not a port number"),
            ("10.0.0.0/8:**", "not a port number"),
            ("10.0.0.5/8:22", "did you mean 10.0.0.0/8"),
            ("fd00:ec2::254:80", "in brackets"),
            ("::1:22", "in brackets"),
            ("[::1:22", "without its ]"),
            ("[::1]", "ports are missing"),
            ("[::1]22", "ports are missing"),
            ("[10.0.0.0/8]:22", ""),
            ("10.0.0.0/8:22\u{0}", "not a port number"),
            ("１0.0.0.0/8:22", "not an IPv4"),
            (&long, "longer than 256"),
            (&many, "more than 64"),
        ];
        for (rule, want) in cases {
            match Rule::parse(rule) {
                // A bracketed IPv4 range is harmless and read as written.
                Ok(r) if want.is_empty() => assert_eq!(r.to_string(), "10.0.0.0/8:22"),
                Ok(r) => panic!("{rule:?} was accepted as {r}"),
                Err(e) => {
                    assert!(e.to_string().contains(want), "{rule:?}: {e}");
                    assert!(e.to_string().len() < 400, "the error stays short: {e}");
                }
            }
        }
    }

    #[test]
    fn ranges_and_ports_match_exactly() {
        let r = Rule::parse("10.0.0.0/8:22,8000-8100").unwrap();
        assert!(r.matches("10.255.0.1".parse().unwrap(), 22));
        assert!(r.matches("10.0.0.0".parse().unwrap(), 8100));
        assert!(!r.matches("11.0.0.0".parse().unwrap(), 22));
        assert!(!r.matches("10.0.0.1".parse().unwrap(), 8101));
        assert!(
            !r.matches("::ffff:10.0.0.1".parse().unwrap(), 22),
            "families apart"
        );
        let all = Rule::parse("0.0.0.0/0:*").unwrap();
        assert!(all.matches("255.255.255.255".parse().unwrap(), 1));
        let v6 = Rule::parse("fe80::/10:*").unwrap();
        assert!(v6.matches("febf::1".parse().unwrap(), 1));
        assert!(!v6.matches("fec0::1".parse().unwrap(), 1));
        let inner = Rule::parse("169.254.169.254:80").unwrap().net;
        let outer = Rule::parse("169.254.0.0/16:*").unwrap().net;
        assert!(inner.within(&outer) && !outer.within(&inner));
        assert!(!Rule::parse("0.0.0.0/0:*").unwrap().net.within(&outer));
    }
}
