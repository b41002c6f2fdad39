//! What one peer may cost the server: connection caps (total and per source address), request
//! head size and read time, body size, and a budget of failed authentications per source
//! address. The server sits on the edge, reachable by people who are not users: none of them
//! may starve the users who are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits an operator may set (`airlock server --max-connections …`); the defaults suit one
/// server on a small machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once, all sources together (agents' control channels included).
    pub max_connections: usize,
    /// Open connections at once from one source address.
    pub max_connections_per_ip: usize,
    /// Time a connection has to finish TLS and send a complete request head (the first, and
    /// every later one on a kept-alive connection once its first byte arrived).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Largest request body (API calls and agent registration), in bytes.
    pub max_body_bytes: usize,
    /// Failed authentications one source address may make in a burst before further failures
    /// are summarised in the audit trail instead of recorded one by one.
    pub auth_failure_burst: u32,
    /// Failed authentications per second a source address earns back.
    pub auth_failures_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 8192,
            max_connections_per_ip: 512,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 256 * 1024,
            auth_failure_burst: 30,
            auth_failures_per_sec: 5,
        }
    }
}

/// Counts open connections, in all and per source address.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// The server holds `max_connections` already.
    Total,
    /// This source address holds `max_connections_per_ip` already.
    PerSource,
}

/// A slot held by one open connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max: limits.max_connections.max(1),
            max_per_ip: limits.max_connections_per_ip.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for a connection from `ip`, or says which cap is reached.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let ip = canonical(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max {
            return Err(ConnectionRefused::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(ConnectionRefused::PerSource);
        }
        *n += 1;
        open.0 += 1;
        Ok(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// An IPv4 address seen as IPv4-mapped IPv6 is the same source.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How long a request of an over-budget source holds the penalty box before it is served: all
/// such sources together get at most a few hundred requests a second.
pub const PENALTY_DELAY: Duration = Duration::from_millis(2);

/// A token bucket of failed authentications per source address, and the "penalty box" that
/// the requests of a source past its budget wait in: they are served one at a time, each after
/// [`PENALTY_DELAY`], so that a flood of bad signatures takes at most one request's worth of
/// the server (and of its database pool) at once, while everyone else goes on.
#[derive(Debug)]
pub struct AuthFailures {
    /// Held while a request of an over-budget source is being served.
    pub penalty_box: tokio::sync::Semaphore,
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl AuthFailures {
    /// A budget as `limits` set it.
    pub fn new(limits: &Limits) -> Self {
        AuthFailures {
            penalty_box: tokio::sync::Semaphore::new(1),
            burst: f64::from(limits.auth_failure_burst.max(1)),
            per_sec: f64::from(limits.auth_failures_per_sec),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has spent its budget (without counting anything).
    pub fn over_budget(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .get(&ip)
            .is_some_and(|(tokens, at)| tokens + at.elapsed().as_secs_f64() * self.per_sec < 1.0)
    }

    /// Counts one failure from `ip`; true while the source is within its budget.
    pub fn note(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Full buckets carry no information: forget them before the map grows further.
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn per_source_and_total_caps_hold_and_free_on_drop() {
        let l = ConnectionLimiter::new(&Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(mapped).unwrap();
        // The mapped form is the same source.
        assert_eq!(l.acquire(a).unwrap_err(), ConnectionRefused::PerSource);
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), ConnectionRefused::Total);
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }

    #[test]
    fn failures_beyond_the_burst_are_over_budget() {
        let f = AuthFailures::new(&Limits {
            auth_failure_burst: 3,
            auth_failures_per_sec: 0,
            ..Limits::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(f.note(ip) && f.note(ip) && f.note(ip));
        assert!(!f.note(ip));
        assert!(f.note("192.0.2.2".parse().unwrap()));
    }
}
