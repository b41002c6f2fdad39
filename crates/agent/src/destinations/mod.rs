//! Where port sessions may connect. Anyone allowed a port document can make the agent open a
//! TCP connection from its host, so the agent checks every destination against a rule set
//! before it connects: by default the link-local ranges and the cloud metadata services (whose
//! answers include the host's credentials) are refused, and everything else is allowed. The
//! operator adds `--deny-destination`/`--allow-destination CIDR:PORTS` rules (or
//! `DenyDestinations`/`AllowDestinations` in the state file).
//!
//! How a destination is judged, for each address it resolves to:
//! 1. an explicit deny rule that matches refuses it;
//! 2. a default deny range that matches refuses it, unless an explicit allow rule that matches
//!    lies wholly inside that range (the operator named that range on purpose: `169.254.0.0/16`
//!    re-opens link-local but not the metadata addresses inside it, which must be named
//!    themselves; a catch-all such as `0.0.0.0/0` never re-opens anything);
//! 3. when any allow rule is given, only what an allow rule matches passes;
//! 4. otherwise it passes.
//!
//! The check is made on the addresses really connected to: the name is resolved once and
//! every address it resolves to is checked. One address that a deny rule (explicit or default)
//! refuses refuses the whole destination (a name that leads to the metadata service is not
//! used at all); addresses that are merely not on the allow list are left out, and the
//! destination is refused when none is left. The connection goes to the checked addresses,
//! never to a second lookup (no DNS rebinding).
//! Aliases are judged as the address they reach: `::ffff:a.b.c.d` as `a.b.c.d`, the embedded
//! IPv4 address of IPv4-compatible, NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) addresses as
//! well as the IPv6 address, and `0.0.0.0`/`::` (which reach the local host on Linux) as
//! `127.0.0.1`/`::1`. Numeric spellings the resolver accepts (`2852039166`, `0xa9fea9fe`,
//! `169.254.43518`) resolve to the address they mean, which is what is checked.

mod rule;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;

use airlock_client::mux::{self, DialFuture, Dialer};

pub use rule::{Net, Ports, Rule, RuleError, MAX_PORT_ITEMS, MAX_RULE_LEN};

/// Most rules of each kind an agent takes.
pub const MAX_RULES: usize = 1024;
/// Most addresses of one name that are checked and tried.
const MAX_ADDRS: usize = 32;
/// The phrase every refusal starts with (after the destination), for people searching the
/// port-connection audit.
pub const REFUSED: &str = "refused by destination rule";

/// Ranges refused unless the operator allows them explicitly, most specific first (so the
/// rule named in a refusal says what the address is), with what each is.
const DEFAULT_DENY: &[(&str, &str)] = &[
    (
        "169.254.169.254/32",
        "cloud metadata: AWS, GCP, Azure, OpenStack, Oracle and others",
    ),
    ("fd00:ec2::254/128", "cloud metadata: AWS IPv6"),
    (
        "169.254.170.2/32",
        "cloud metadata: AWS ECS task credentials",
    ),
    ("169.254.170.23/32", "cloud metadata: AWS EKS Pod Identity"),
    (
        "fd00:ec2::23/128",
        "cloud metadata: AWS EKS Pod Identity IPv6",
    ),
    ("169.254.0.23/32", "cloud metadata: Tencent Cloud"),
    ("100.100.100.200/32", "cloud metadata: Alibaba Cloud"),
    ("168.63.129.16/32", "cloud host agent: Azure WireServer"),
    ("169.254.0.0/16", "IPv4 link-local"),
    ("fe80::/10", "IPv6 link-local"),
];

/// A parsed rule with where it came from, for the refusal message.
#[derive(Clone, Debug)]
struct Entry {
    rule: Rule,
    /// `deny 10.0.0.0/8:*` or `deny 169.254.0.0/16:* (default: IPv4 link-local)`.
    label: String,
}

/// The agent's destination rules.
#[derive(Clone, Debug)]
pub struct DestinationRules {
    allow: Vec<Entry>,
    deny: Vec<Entry>,
    defaults: Vec<Entry>,
    /// The default ranges are refused whatever the allow rules say (the server's preference
    /// `denyLinkLocalDestinations`, see [`DestinationRules::for_session`]).
    locked: bool,
}

impl Default for DestinationRules {
    /// The defaults only: link-local and metadata refused, all else allowed.
    fn default() -> Self {
        let defaults = DEFAULT_DENY
            .iter()
            .filter_map(|(cidr, what)| {
                let rule = Rule::parse(&format!("{cidr}:*")).ok()?;
                Some(Entry {
                    label: format!("deny {rule} (default: {what})"),
                    rule,
                })
            })
            .collect();
        DestinationRules {
            allow: Vec::new(),
            deny: Vec::new(),
            defaults,
            locked: false,
        }
    }
}

/// Why a destination was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The address that was refused (as resolved).
    pub addr: SocketAddr,
    /// The rule that refused it, as shown.
    pub rule: String,
    /// A deny rule refused it (not merely missing from the allow list).
    pub denied: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{REFUSED} {} (address {})", self.rule, self.addr)
    }
}

impl DestinationRules {
    /// The defaults plus the operator's rules, parsed; the first bad rule is the error.
    pub fn new<A: AsRef<str>, D: AsRef<str>>(
        allow: &[A],
        deny: &[D],
    ) -> Result<DestinationRules, RuleError> {
        DestinationRules::default().extended(allow, deny)
    }

    /// These rules and more (from another source: the state file beside the command line).
    pub fn extended<A: AsRef<str>, D: AsRef<str>>(
        &self,
        allow: &[A],
        deny: &[D],
    ) -> Result<DestinationRules, RuleError> {
        let mut rules = self.clone();
        for (list, into, verb) in [
            (
                allow.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
                &mut rules.allow,
                "allow",
            ),
            (
                deny.iter().map(AsRef::as_ref).collect(),
                &mut rules.deny,
                "deny",
            ),
        ] {
            if list.len() + into.len() > MAX_RULES {
                return Err(RuleError {
                    rule: format!("{} {verb} rules", list.len() + into.len()),
                    why: format!("at most {MAX_RULES} are taken"),
                });
            }
            for text in list {
                let rule = Rule::parse(text)?;
                into.push(Entry {
                    label: format!("{verb} {rule}"),
                    rule,
                });
            }
        }
        Ok(rules)
    }

    /// The rules one session runs with. While the server's preference
    /// `denyLinkLocalDestinations` is on (`inputs.denyLinkLocalDestinations` of the task's
    /// DocumentContent; the server's default), the link-local and metadata ranges are refused
    /// even where this agent's allow rules re-open them: the server's rule applies on top of the
    /// agent's own and can only narrow them. Off, or absent (an older server), the agent's
    /// rules alone decide.
    pub fn for_session(self: &Arc<Self>, document_content: &serde_json::Value) -> Arc<Self> {
        let deny = document_content
            .get("inputs")
            .and_then(|i| i.get("denyLinkLocalDestinations"))
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        if deny && !self.locked {
            Arc::new(DestinationRules {
                locked: true,
                ..(**self).clone()
            })
        } else {
            self.clone()
        }
    }

    /// Whether any rule was given beside the defaults.
    pub fn has_operator_rules(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// Whether `addr` may be connected to; the refusal names the rule.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let port = addr.port();
        let forms = forms(addr.ip());
        let refuse = |label: &str| Refusal {
            addr,
            rule: label.to_owned(),
            denied: true,
        };
        // 1. Explicit deny, on any form of the address.
        for ip in &forms {
            if let Some(e) = self.deny.iter().find(|e| e.rule.matches(*ip, port)) {
                return Err(refuse(&e.label));
            }
        }
        // 2. Default deny, unless an allow rule inside that range matches.
        for ip in &forms {
            for d in self.defaults.iter().filter(|d| d.rule.net.contains(*ip)) {
                let reopened = !self.locked
                    && self
                        .allow
                        .iter()
                        .any(|a| a.rule.matches(*ip, port) && a.rule.net.within(&d.rule.net));
                if !reopened {
                    return Err(refuse(&d.label));
                }
            }
        }
        // 3. An allow list, when there is one: some form must be allowed.
        if !self.allow.is_empty()
            && !forms
                .iter()
                .any(|ip| self.allow.iter().any(|a| a.rule.matches(*ip, port)))
        {
            return Err(Refusal {
                denied: false,
                ..refuse("allow-list (no --allow-destination rule matches)")
            });
        }
        Ok(())
    }

    /// A [`Dialer`] for the multiplexed modes that connects through [`connect`].
    pub fn dialer(self: &Arc<Self>) -> Dialer {
        let rules = self.clone();
        Dialer(Arc::new(move |host: String, port: u16| -> DialFuture {
            let rules = rules.clone();
            Box::pin(async move { connect(&rules, &host, port).await })
        }))
    }
}

/// The forms of `ip` the rules judge: the address as connected to (IPv4-mapped IPv6 as its
/// IPv4 address; the unspecified addresses as loopback), then any IPv4 address embedded in it
/// that the connection may end up at.
pub fn forms(ip: IpAddr) -> Vec<IpAddr> {
    let canonical = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let canonical = match canonical {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    let mut out = vec![canonical];
    if let IpAddr::V6(v6) = canonical {
        let s = v6.segments();
        let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        let embedded = if s[..6] == [0; 6] && !v6.is_loopback() {
            // IPv4-compatible `::a.b.c.d` (deprecated, still accepted by the stack).
            Some(low)
        } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            // NAT64 well-known prefix: a translator reaches `a.b.c.d`.
            Some(low)
        } else if s[0] == 0x2002 {
            // 6to4: `2002:AABB:CCDD::/48` is relayed to `AA.BB.CC.DD`.
            Some(Ipv4Addr::new(
                (s[1] >> 8) as u8,
                s[1] as u8,
                (s[2] >> 8) as u8,
                s[2] as u8,
            ))
        } else {
            None
        };
        if let Some(v4) = embedded {
            let v4 = if v4.is_unspecified() {
                Ipv4Addr::LOCALHOST
            } else {
                v4
            };
            out.push(IpAddr::V4(v4));
        }
    }
    out
}

/// The addresses `host` names: `localhost` (or nothing) is both loopback addresses, a literal
/// is itself, anything else is resolved (once; numeric spellings such as `2852039166` resolve
/// to the address they mean).
async fn addresses(host: &str) -> std::io::Result<Vec<IpAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
    }
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    airlock_client::resolve::lookup(host).await
}

/// Resolves `host`, checks every address against `rules`, and connects to the first checked
/// address that answers, within [`mux::DIAL_TIMEOUT`]. The error is in words for the user:
/// `cannot connect to HOST:PORT: refused by destination rule …` when a rule refused it.
pub async fn connect(rules: &DestinationRules, host: &str, port: u16) -> Result<TcpStream, String> {
    let shown = mux::display_target(host, port);
    let attempt = async {
        let ips = addresses(host)
            .await
            .map_err(|e| format!("cannot connect to {shown}: {}", mux::describe_io(&e)))?;
        connect_checked(rules, &shown, ips, port).await
    };
    match tokio::time::timeout(mux::DIAL_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "cannot connect to {shown}: no answer within {} s",
            mux::DIAL_TIMEOUT.as_secs()
        )),
    }
}

/// Checks each of `ips` (what the destination `shown` resolved to, once) and connects to the
/// first that passes and answers: the socket's peer is always an address that was checked.
async fn connect_checked(
    rules: &DestinationRules,
    shown: &str,
    ips: Vec<IpAddr>,
    port: u16,
) -> Result<TcpStream, String> {
    let mut addrs = Vec::new();
    let mut not_listed = None;
    for ip in ips.into_iter().take(MAX_ADDRS) {
        let a = SocketAddr::new(ip, port);
        match rules.check(a) {
            Ok(()) => addrs.push(a),
            Err(refusal) if refusal.denied => {
                tracing::warn!(destination = shown, "{refusal}");
                return Err(format!("cannot connect to {shown}: {refusal}"));
            }
            Err(refusal) => not_listed = not_listed.or(Some(refusal)),
        }
    }
    if let (true, Some(refusal)) = (addrs.is_empty(), not_listed) {
        tracing::warn!(destination = shown, "{refusal}");
        return Err(format!("cannot connect to {shown}: {refusal}"));
    }
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("cannot connect to {shown}: {}", mux::describe_io(&e)),
        None => format!("cannot connect to {shown}: the name has no address"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn refused_by(rules: &DestinationRules, addr: &str) -> Option<String> {
        rules.check(sa(addr)).err().map(|r| r.rule)
    }

    #[test]
    fn defaults_refuse_link_local_and_metadata_and_allow_the_rest() {
        let r = DestinationRules::default();
        for a in [
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "169.254.170.2:80",
            "169.254.170.23:80",
            "[fd00:ec2::23]:80",
            "169.254.0.23:80",
            "100.100.100.200:80",
            "168.63.129.16:80",
            "169.254.1.1:22",
            "[fe80::1]:22",
            // Aliases of the metadata address.
            "[::ffff:169.254.169.254]:80",
            "[::169.254.169.254]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:a9fe:a9fe::1]:80",
        ] {
            let rule = refused_by(&r, a).unwrap_or_else(|| panic!("{a} allowed"));
            assert!(rule.contains("(default: "), "{a}: {rule}");
        }
        assert!(refused_by(&r, "169.254.169.254:80")
            .unwrap()
            .starts_with("deny 169.254.169.254/32:* (default: cloud metadata"));
        for a in [
            "127.0.0.1:22",
            "[::1]:22",
            "10.0.0.1:5432",
            "0.0.0.0:80",
            "[::]:80",
            "[64:ff9b::a00:1]:80",
        ] {
            assert_eq!(refused_by(&r, a), None, "{a}");
        }
    }

    #[test]
    fn explicit_deny_beats_allow_and_unspecified_is_loopback() {
        let r = DestinationRules::new(&["127.0.0.0/8:*"], &["127.0.0.1:5432"]).unwrap();
        assert_eq!(
            refused_by(&r, "127.0.0.1:5432").as_deref(),
            Some("deny 127.0.0.1/32:5432")
        );
        assert_eq!(
            refused_by(&r, "0.0.0.0:5432").as_deref(),
            Some("deny 127.0.0.1/32:5432")
        );
        assert_eq!(
            refused_by(&r, "[::ffff:127.0.0.1]:5432").as_deref(),
            Some("deny 127.0.0.1/32:5432")
        );
        assert_eq!(refused_by(&r, "127.0.0.1:5433"), None);
        assert_eq!(refused_by(&r, "0.0.0.0:22"), None);
        // The allow list: nothing else passes.
        assert!(refused_by(&r, "10.0.0.1:22")
            .unwrap()
            .starts_with("allow-list"));
        assert!(refused_by(&r, "[::1]:22")
            .unwrap()
            .starts_with("allow-list"));
        let v6 = DestinationRules::new::<&str, &str>(&[], &["[::1]:*"]).unwrap();
        assert!(refused_by(&v6, "[::]:22").is_some());
    }

    #[test]
    fn a_default_deny_is_reopened_only_by_an_allow_inside_it() {
        // A catch-all allow re-opens nothing.
        let all = DestinationRules::new::<&str, &str>(&["0.0.0.0/0:*", "::/0:*"], &[]).unwrap();
        assert!(refused_by(&all, "169.254.169.254:80").is_some());
        assert!(refused_by(&all, "169.254.1.1:80").is_some());
        assert!(refused_by(&all, "[fe80::1]:80").is_some());
        assert_eq!(refused_by(&all, "10.1.1.1:80"), None);
        // Link-local re-opened; the metadata address inside it stays refused.
        let ll = DestinationRules::new::<&str, &str>(&["169.254.0.0/16:*"], &[]).unwrap();
        assert_eq!(refused_by(&ll, "169.254.1.1:80"), None);
        assert!(refused_by(&ll, "169.254.169.254:80")
            .unwrap()
            .contains("cloud metadata"));
        // The metadata address named on purpose, on one port.
        let md = DestinationRules::new::<&str, &str>(&["169.254.169.254:80"], &[]).unwrap();
        assert_eq!(refused_by(&md, "169.254.169.254:80"), None);
        assert_eq!(refused_by(&md, "[::ffff:169.254.169.254]:80"), None);
        assert!(refused_by(&md, "169.254.169.254:443").is_some());
        // An explicit deny still wins over the re-opening allow.
        let both = DestinationRules::new(&["169.254.169.254:80"], &["169.254.0.0/16:*"]).unwrap();
        assert!(refused_by(&both, "169.254.169.254:80")
            .unwrap()
            .starts_with("deny 169.254.0.0/16:*"));
    }

    #[test]
    fn the_servers_link_local_preference_locks_the_defaults() {
        let md = Arc::new(
            DestinationRules::new::<&str, &str>(&["169.254.169.254:80", "169.254.0.0/16:*"], &[])
                .unwrap(),
        );
        let on = serde_json::json!({"inputs": {"denyLinkLocalDestinations": true}});
        let off = serde_json::json!({"inputs": {"denyLinkLocalDestinations": false}});
        let locked = md.for_session(&on);
        for addr in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "169.254.1.1:22",
        ] {
            assert!(refused_by(&locked, addr).is_some(), "{addr}");
        }
        // Elsewhere the agent's own rules still decide (its allow list stays an allow list).
        assert!(refused_by(&locked, "10.0.0.1:80").is_some());
        assert_eq!(
            refused_by(&md.for_session(&off), "169.254.169.254:80"),
            None
        );
        assert_eq!(
            refused_by(&md.for_session(&serde_json::json!({})), "169.254.1.1:22"),
            None
        );
    }

    #[test]
    fn bad_rules_and_too_many_are_refused() {
        assert!(DestinationRules::new::<&str, &str>(&["10.0.0.0/33:*"], &[]).is_err());
        assert!(DestinationRules::new::<&str, &str>(&[], &["999.1.1.1:1"]).is_err());
        let many = vec!["10.0.0.0/8:1"; MAX_RULES + 1];
        let e = DestinationRules::new::<&str, &str>(&[], &many).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[tokio::test]
    async fn the_connection_goes_to_an_address_that_was_checked() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // One denied address among the answers refuses the name; nothing is connected to.
        let r = DestinationRules::default();
        let e = connect_checked(&r, "x", vec![ip("127.0.0.1"), ip("169.254.169.254")], port)
            .await
            .unwrap_err();
        assert!(e.contains(REFUSED) && e.contains("169.254.169.254"), "{e}");
        let e = connect_checked(
            &r,
            "x",
            vec![ip("::ffff:169.254.169.254"), ip("127.0.0.1")],
            port,
        )
        .await
        .unwrap_err();
        assert!(e.contains(REFUSED), "{e}");
        // Answers off the allow list are skipped: the socket's peer is the allowed address.
        let allow = format!("127.0.0.1:{port}");
        let r = DestinationRules::new::<&str, &str>(&[&allow], &[]).unwrap();
        let s = connect_checked(
            &r,
            "x",
            vec![ip("::1"), ip("127.0.0.2"), ip("127.0.0.1")],
            port,
        )
        .await
        .unwrap();
        assert_eq!(s.peer_addr().unwrap(), sa(&allow));
        // None left: refused, naming the allow list.
        let e = connect_checked(&r, "x", vec![ip("::1"), ip("127.0.0.2")], port)
            .await
            .unwrap_err();
        assert!(e.contains("allow-list"), "{e}");
        // No answer at all.
        let e = connect_checked(&r, "x", vec![], port).await.unwrap_err();
        assert!(e.contains("no address"), "{e}");
    }

    #[tokio::test]
    async fn numeric_spellings_resolve_to_the_address_checked() {
        let r = Arc::new(DestinationRules::default());
        // Each resolves (without DNS) to 169.254.169.254 and is refused before any connection.
        for host in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0xA9FEA9FE",
            "169.254.43518",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "::ffff:169.254.169.254",
            "[::ffff:a9fe:a9fe]",
        ] {
            let e = connect(&r, host, 80).await.unwrap_err();
            assert!(
                e.contains(REFUSED) && e.contains("169.254.169.254/32"),
                "{host}: {e}"
            );
        }
    }
}
