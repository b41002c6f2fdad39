//! Refuses a second use of the exact signature of a request whose answer carries a secret.
//! SigV4 lets a captured request be sent again until its date leaves the clock-skew window; for
//! a `StartSession` that would hand a second shell, owned by the signer, to whoever replays it
//! (the answer's token goes to the sender), and for `CreateAccessKey` a new key. Other requests
//! stay replayable as AWS's are: a replay only repeats the signer's own call and shows the
//! replayer nothing (and pollers and retries legitimately send identical requests within one
//! second, which sign alike).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Signatures remembered at most; past it the oldest are forgotten first.
const MAX_REMEMBERED: usize = 200_000;

/// The signatures remembered, and the order they came in (oldest first).
type Seen = (HashSet<String>, VecDeque<(Instant, String)>);

/// The signatures of single-use requests seen within the skew window.
#[derive(Debug)]
pub struct ReplayGuard {
    ttl: Duration,
    seen: Mutex<Seen>,
}

/// Whether an operation's answer carries a secret (a data-channel token, a key, a code), so
/// that its signature may be used once only.
pub fn single_use(operation: &str) -> bool {
    let op = operation.rsplit('.').next().unwrap_or(operation);
    matches!(
        op,
        "StartSession"
            | "ResumeSession"
            | "CreateAccessKey"
            | "GetSessionToken"
            | "CreateActivation"
    )
}

impl ReplayGuard {
    /// Remembers signatures for `ttl` (twice the clock skew: a request dated at the edge of the
    /// window stays acceptable for the whole skew on either side).
    pub fn new(ttl: Duration) -> Self {
        ReplayGuard {
            ttl,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// True the first time `signature` is presented within the window, false on a replay.
    pub fn first_use(&self, signature: &str) -> bool {
        let now = Instant::now();
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        while let Some((at, _)) = order.front() {
            if now.duration_since(*at) < self.ttl && order.len() < MAX_REMEMBERED {
                break;
            }
            if let Some((_, s)) = order.pop_front() {
                set.remove(&s);
            }
        }
        if !set.insert(signature.to_owned()) {
            return false;
        }
        order.push_back((now, signature.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_within_the_window() {
        let g = ReplayGuard::new(Duration::from_millis(50));
        assert!(g.first_use("abc"));
        assert!(!g.first_use("abc"));
        assert!(g.first_use("abd"));
        std::thread::sleep(Duration::from_millis(60));
        // Past the window the date check refuses it anyway; the guard may forget it.
        assert!(g.first_use("abc"));
    }

    #[test]
    fn operations_answering_secrets_are_single_use() {
        assert!(single_use("AmazonSSM.StartSession"));
        assert!(single_use("AmazonSSM.ResumeSession"));
        assert!(single_use("Airlock.CreateAccessKey"));
        assert!(single_use("AmazonSSM.CreateActivation"));
        assert!(!single_use("AmazonSSM.DescribeSessions"));
        assert!(!single_use("AmazonSSM.TerminateSession"));
        assert!(!single_use("Airlock.StartSessionX"));
    }
}
