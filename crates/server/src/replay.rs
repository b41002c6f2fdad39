//! Refuses a second use of the exact signature of a request whose answer carries a secret.
//! SigV4 lets a captured request be sent again until its date leaves the clock-skew window; for
//! a `StartSession` that would hand a second shell, owned by the signer, to whoever replays it
//! (the answer's token goes to the sender), and for `CreateAccessKey` a new key. Other requests
//! stay replayable as AWS's are: a replay only repeats the signer's own call and shows the
//! replayer nothing (and pollers and retries legitimately send identical requests within one
//! second, which sign alike).
//!
//! A signature seen again within [`SAME_SECOND`] of its first use is most likely not an attack
//! but the same tool run twice in one second (SigV4 dates have one-second resolution and the
//! AWS CLI signs nothing random, so two identical `aws ssm start-session` calls sign alike).
//! It is still refused, but as `ThrottlingException`, which every AWS SDK retries with a fresh
//! signature after a back-off: the second call then succeeds, and a replayer still gets nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Signatures remembered at most; past it the oldest are forgotten first.
const MAX_REMEMBERED: usize = 200_000;

/// How soon after its first use a second use of a signature is answered as retryable.
pub const SAME_SECOND: Duration = Duration::from_secs(2);

/// The signatures remembered with their first use, and the order they came in (oldest first).
type Seen = (HashMap<String, Instant>, VecDeque<(Instant, String)>);

/// What the guard says of a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Not seen within the window: go on.
    First,
    /// Seen less than [`SAME_SECOND`] ago: refuse, as retryable.
    Again,
    /// Seen earlier than that: refuse as a replay.
    Replay,
}

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
            seen: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// True the first time `signature` is presented within the window, false on a replay.
    pub fn first_use(&self, signature: &str) -> bool {
        self.check(signature) == Use::First
    }

    /// Records `signature` and says whether it was seen before, and how recently.
    pub fn check(&self, signature: &str) -> Use {
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
        if let Some(first) = set.get(signature) {
            return if now.duration_since(*first) < SAME_SECOND {
                Use::Again
            } else {
                Use::Replay
            };
        }
        set.insert(signature.to_owned(), now);
        order.push_back((now, signature.to_owned()));
        Use::First
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn a_second_use_soon_after_the_first_is_retryable_later_a_replay() {
        let g = ReplayGuard::new(Duration::from_secs(600));
        assert_eq!(g.check("s"), Use::First);
        assert_eq!(g.check("s"), Use::Again);
        {
            let mut seen = g.seen.lock().unwrap();
            *seen.0.get_mut("s").unwrap() -= SAME_SECOND;
        }
        assert_eq!(g.check("s"), Use::Replay);
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
