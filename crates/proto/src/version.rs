//! Version comparisons behind the feature gates of protocol.md §6.3.
//!
//! The plugin enables a feature only when the agent's version is strictly greater than a
//! threshold, and only when both have exactly four numeric parts (anything else counts as
//! "not supported"). The agent compares the client's version more loosely (missing parts
//! count as 0). Both rules live here so the agent and client apply the same ones.

use std::cmp::Ordering;

/// AgentVersion above which the plugin uses smux for `LocalPortForwarding` (§6.3).
pub const MUX_MIN_AGENT_VERSION: &str = "3.0.196.0";
/// AgentVersion above which the plugin turns smux keep-alive off (§6.3).
pub const KEEPALIVE_OFF_AGENT_VERSION: &str = "3.1.1511.0";
/// ClientVersion from which the agent uses smux (`≥`, §6.3).
pub const MUX_MIN_CLIENT_VERSION: &str = "1.1.70";
/// ClientVersion above which the agent turns smux keep-alive off (§6.3).
pub const KEEPALIVE_OFF_CLIENT_VERSION: &str = "1.2.331.0";

fn parts(v: &str) -> Option<Vec<u64>> {
    v.trim()
        .split('.')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()
        .filter(|p| !p.is_empty())
}

/// Compares two dotted numeric versions, missing parts counting as 0; `None` when either
/// is not a dotted list of numbers. This is the agent's rule.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parts(a)?, parts(b)?);
    let n = a.len().max(b.len());
    let get = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..n)
            .map(|i| get(&a, i).cmp(&get(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

/// The plugin's gate: `version` is strictly greater than `threshold`, both having exactly
/// four numeric parts; false otherwise.
pub fn plugin_gate(version: &str, threshold: &str) -> bool {
    let four = |v: &str| parts(v).filter(|p| p.len() == 4);
    match (four(version), four(threshold)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// Whether an agent uses smux with a client of this version (`≥ 1.1.70`).
pub fn client_supports_mux(client_version: &str) -> bool {
    compare(client_version, MUX_MIN_CLIENT_VERSION).is_some_and(|o| o.is_ge())
}

/// Whether an smux server must send keep-alive NOPs to a client of this version: yes unless
/// the client is newer than 1.2.331.0, which turns keep-alive off on its side.
pub fn client_wants_keepalive(client_version: &str) -> bool {
    !compare(client_version, KEEPALIVE_OFF_CLIENT_VERSION).is_some_and(|o| o.is_gt())
}

/// Whether an smux client must send keep-alive NOPs to an agent of this version (the plugin's
/// gate: only agents newer than 3.1.1511.0 run without).
pub fn agent_wants_keepalive(agent_version: &str) -> bool {
    !plugin_gate(agent_version, KEEPALIVE_OFF_AGENT_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates() {
        assert!(plugin_gate("3.3.9999.0", MUX_MIN_AGENT_VERSION));
        assert!(!plugin_gate("2.3.722.0", MUX_MIN_AGENT_VERSION));
        assert!(!plugin_gate("3.3.9999", MUX_MIN_AGENT_VERSION));
        assert!(!plugin_gate("3.1.1511.0", KEEPALIVE_OFF_AGENT_VERSION));
        assert!(client_supports_mux("1.2.677.0"));
        assert!(client_supports_mux("1.1.70.0"));
        assert!(!client_supports_mux("1.1.61.0"));
        assert!(!client_supports_mux("garbage"));
        assert!(!client_wants_keepalive("1.2.677.0"));
        assert!(client_wants_keepalive("1.2.0.0"));
        assert!(client_wants_keepalive("1.2.331.0"));
        assert!(!agent_wants_keepalive("3.3.9999.0"));
        assert!(agent_wants_keepalive("3.1.1511.0"));
    }
}
