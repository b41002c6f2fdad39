//! A fault-injecting TCP proxy for tests of what the network does to sessions (issue 13):
//! put it between client and gateway or gateway and agent, then cut every connection, refuse
//! new ones, stall (blackhole: nothing moves, nothing closes), throttle or delay, by hand or on a
//! schedule. Bytes that do pass are passed whole and in order: the proxy injects faults of the
//! network, never corruption.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the link does to traffic now (see [`FaultProxy::set`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// New connections are accepted and closed at once (the far end is unreachable).
    pub refuse: bool,
    /// Nothing moves either way, nothing is closed: a half-open link, as when a NAT forgets
    /// the connection or a cable is pulled.
    pub stall: bool,
    /// At most this many bytes a second each way (per connection).
    pub rate: Option<u64>,
    /// Added one-way latency for every read's bytes.
    pub delay: Duration,
}

/// One step of a schedule: at `after` (from the schedule's start), do `what`.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close every connection through the proxy now (new ones pass unless refused).
    Cut,
    /// The link becomes this.
    Set(Link),
}

/// A TCP proxy on a loopback port in front of `upstream`; dropped, it stops accepting and
/// closes what it carries.
pub struct FaultProxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Cancelled to cut; replaced by a fresh token for the connections after.
    epoch: Arc<Mutex<CancellationToken>>,
    /// Cancelled to freeze the connections open now; replaced for the ones after.
    frozen: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
    cuts: Arc<std::sync::atomic::AtomicU64>,
}

/// Bytes read per hop before they are passed on.
const BUF: usize = 16 * 1024;

impl FaultProxy {
    /// Starts proxying a fresh loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, upstream)
    }

    /// Starts proxying what `listener` accepts to `upstream`: bind first when the upstream
    /// must know the proxy's address before it starts (a server's public URL).
    pub fn start_on(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let addr = listener.local_addr()?;
        let (link, _) = watch::channel(Link::default());
        let epoch = Arc::new(Mutex::new(CancellationToken::new()));
        let frozen = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let proxy = FaultProxy {
            addr,
            link,
            epoch: epoch.clone(),
            frozen: frozen.clone(),
            stop: stop.clone(),
            cuts: Arc::default(),
        };
        let links = proxy.link.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                let Ok((inbound, _)) = accepted else {
                    continue;
                };
                if links.borrow().refuse {
                    drop(inbound);
                    continue;
                }
                let cut = epoch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .child_token();
                let freeze = frozen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .child_token();
                let links = links.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ir, ow, links.clone(), freeze.clone()) => {}
                        _ = pump(or, iw, links, freeze) => {}
                        _ = cut.cancelled() => {}
                        _ = stop.cancelled() => {}
                    }
                    // Dropping both halves closes both connections.
                });
            }
        });
        Ok(proxy)
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy now.
    pub fn cut(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        epoch.cancel();
        *epoch = CancellationToken::new();
        self.cuts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection open now: from here on they carry nothing either way and are
    /// never closed (a half-open link: the peer vanished without a FIN or RST, say a NAT
    /// dropped its mapping). New connections pass as the link allows.
    pub fn freeze(&self) {
        let mut frozen = self.frozen.lock().unwrap_or_else(PoisonError::into_inner);
        frozen.cancel();
        *frozen = CancellationToken::new();
    }

    /// How many times [`FaultProxy::cut`] ran.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes the link behave as `link` from now on (for connections open and new).
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// What the link does now.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Plays `schedule` (times from now, in any order) on a task of its own; the returned
    /// handle finishes after the last step.
    pub fn play(self: &Arc<Self>, schedule: Vec<(Duration, Fault)>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut schedule = schedule;
        schedule.sort_by_key(|(at, _)| *at);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (at, fault) in schedule {
                tokio::time::sleep_until(start + at).await;
                match fault {
                    Fault::Cut => me.cut(),
                    Fault::Set(link) => me.set(link),
                }
            }
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction under the link's current faults. Returns at end of stream or error.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut links: watch::Receiver<Link>,
    frozen: CancellationToken,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        if frozen.is_cancelled() {
            // Held open, silent, until the connection is cut or the proxy dropped.
            std::future::pending::<()>().await;
        }
        // A stalled link reads nothing either: the sender's window fills, as on a real one.
        while links.borrow_and_update().stall {
            if links.changed().await.is_err() {
                return;
            }
        }
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = frozen.cancelled() => continue,
        };
        if frozen.is_cancelled() {
            continue;
        }
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let data = buf.get(..n).unwrap_or_default();
        let link = *links.borrow();
        if !link.delay.is_zero() {
            tokio::time::sleep(link.delay).await;
        }
        // Stalled after the read: hold these bytes until the link moves again.
        while links.borrow_and_update().stall {
            if links.changed().await.is_err() {
                return;
            }
        }
        match link.rate {
            Some(rate) if rate > 0 => {
                // Paced in slices so a throttled link still trickles rather than bursts.
                for slice in data.chunks(((rate / 20).max(1) as usize).min(BUF)) {
                    if to.write_all(slice).await.is_err() {
                        return;
                    }
                    let secs = slice.len() as f64 / rate as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
            }
            _ => {
                if to.write_all(data).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        s.write_all(data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn passes_bytes_whole_and_cuts_stalls_refuses_delays_and_throttles() {
        let proxy = Arc::new(FaultProxy::start(echo().await).await.unwrap());
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut s, &data).await, data);

        // Stall: nothing comes back, the connection stays open; unstalled, everything arrives.
        proxy.set(Link {
            stall: true,
            ..Link::default()
        });
        s.write_all(b"held").await.unwrap();
        let mut b = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b)).await;
        assert!(r.is_err(), "a stalled link passed bytes");
        proxy.set(Link::default());
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"held");

        // Cut: the open connection ends; a new one works.
        proxy.cut();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(n.is_err() || rest.is_empty(), "{n:?}");
        assert_eq!(proxy.cuts(), 1);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"again").await, b"again");

        // Refused: accepted and closed at once.
        proxy.set(Link {
            refuse: true,
            ..Link::default()
        });
        let mut r = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The connection opened before still works.
        assert_eq!(round_trip(&mut s, b"open").await, b"open");

        // Delay: each way adds it.
        proxy.set(Link {
            delay: Duration::from_millis(100),
            ..Link::default()
        });
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // Throttle: 64 KiB at 128 KiB/s each way takes about a second, not milliseconds.
        proxy.set(Link {
            rate: Some(128 * 1024),
            ..Link::default()
        });
        let t = std::time::Instant::now();
        let big = vec![7u8; 64 * 1024];
        assert_eq!(round_trip(&mut s, &big).await, big);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );

        // Freeze: the open connection goes silent but stays open; a new one works.
        proxy.set(Link::default());
        proxy.freeze();
        s.write_all(b"lost").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b)).await;
        assert!(
            r.is_err(),
            "a frozen connection passed bytes or closed: {r:?}"
        );
        let mut s2 = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s2, b"fresh").await, b"fresh");

        // A schedule: a cut then a stall lifted later.
        proxy.set(Link::default());
        let played = proxy.play(vec![
            (Duration::from_millis(50), Fault::Cut),
            (
                Duration::from_millis(60),
                Fault::Set(Link {
                    stall: true,
                    ..Link::default()
                }),
            ),
            (Duration::from_millis(300), Fault::Set(Link::default())),
        ]);
        played.await.unwrap();
        assert_eq!(proxy.cuts(), 2);
        assert_eq!(proxy.link(), Link::default());
    }
}
