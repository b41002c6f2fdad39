//! Name resolution for the destinations of forwarded connections.
//!
//! `getaddrinfo` blocks a thread: tokio runs it on its blocking pool, and a timeout around it
//! abandons the wait but not the thread. A forward that opens a hundred connections to
//! `db.internal` at once would start a hundred lookups, and a resolver that hangs would pile
//! up a blocking thread per connection. So lookups of one name are made one at a time (the
//! connections that arrive meanwhile share the answer), answers are kept for
//! [`CACHE_TTL`], and at most [`MAX_IN_FLIGHT`] lookups run in the whole process, each holding
//! its slot until its thread is free again.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// How long a successful answer is reused (short: the resolver's own TTL is not visible).
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Most lookups running at once in this process.
pub const MAX_IN_FLIGHT: usize = 8;
/// Names remembered before stale ones are dropped.
const MAX_NAMES: usize = 1024;

type Answer = Option<(Instant, Vec<IpAddr>)>;

/// The process-wide resolver state.
struct Resolver {
    slots: Arc<Semaphore>,
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Answer>>>>,
}

fn resolver() -> &'static Resolver {
    static R: OnceLock<Resolver> = OnceLock::new();
    R.get_or_init(|| Resolver {
        slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        names: Mutex::new(HashMap::new()),
    })
}

/// The addresses of `host` (a name; literals and `localhost` are the caller's to handle), in
/// the resolver's order, from a recent answer when there is one.
pub async fn lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let r = resolver();
    let key = host.to_ascii_lowercase();
    let entry = {
        let mut names = r.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() >= MAX_NAMES && !names.contains_key(&key) {
            // Forget names nobody is resolving now and whose answer is stale (or missing).
            names.retain(|_, e| {
                Arc::strong_count(e) > 1
                    || e.try_lock()
                        .is_ok_and(|a| a.as_ref().is_some_and(|(at, _)| at.elapsed() < CACHE_TTL))
            });
        }
        names.entry(key).or_default().clone()
    };
    // One lookup per name at a time; those who waited find its answer.
    let mut answer = entry.lock().await;
    if let Some((at, ips)) = answer.as_ref() {
        if at.elapsed() < CACHE_TTL {
            return Ok(ips.clone());
        }
    }
    let slot = r
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("the resolver is shut down"))?;
    let name = host.to_owned();
    // The slot goes with the lookup, not with this caller: a caller that gives up (its dial
    // timed out) leaves the slot taken until the blocking thread really is free.
    let found = tokio::spawn(async move {
        let _slot = slot;
        tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
    })
    .await
    .map_err(|e| io::Error::other(format!("lookup failed: {e}")))??;
    let mut ips: Vec<IpAddr> = Vec::with_capacity(found.len());
    for ip in found {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    *answer = Some((Instant::now(), ips.clone()));
    Ok(ips)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A name the machine resolves without a network: its own host name (from /etc/hosts or
    /// the local resolver), else `localhost` itself.
    fn local_name() -> String {
        use std::net::ToSocketAddrs;
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && (h.as_str(), 0).to_socket_addrs().is_ok())
            .unwrap_or_else(|| "localhost".to_owned())
    }

    #[tokio::test]
    async fn answers_are_shared_and_reused() {
        let name = local_name();
        let upper = name.to_uppercase();
        let (a, b) = tokio::join!(lookup(&name), lookup(&upper));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(!a.is_empty());
        assert_eq!(a, b, "one lookup answers both");
        let entry = resolver()
            .names
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .cloned()
            .expect("the name is remembered");
        let cached = entry.lock().await.clone().expect("an answer is kept");
        assert_eq!(cached.1, a);
        // Within the TTL the answer comes from memory: the kept timestamp does not move.
        let again = lookup(&name).await.unwrap();
        assert_eq!(again, a);
        assert_eq!(entry.lock().await.as_ref().unwrap().0, cached.0);
    }

    #[tokio::test]
    async fn an_unknown_name_is_an_error_and_not_remembered_as_an_answer() {
        let name = "no-such-host.invalid";
        assert!(lookup(name).await.is_err());
        let entry = resolver().names.lock().unwrap().get(name).cloned().unwrap();
        assert!(entry.lock().await.is_none());
        // The slot of the failed lookup is given back (other tests may hold one briefly).
        let deadline = Instant::now() + Duration::from_secs(10);
        while resolver().slots.available_permits() < MAX_IN_FLIGHT {
            assert!(Instant::now() < deadline, "lookup slots given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
