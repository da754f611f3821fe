//! Failed authentications per peer address: after too many within a window the peer is
//! refused outright for a while, whatever it presents, so tokens cannot be guessed at the
//! daemon's speed. The start of each lockout is audited by the caller.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Peers remembered before entries with nothing left to say are dropped.
const SWEEP_ABOVE: usize = 4096;

/// The policy and what each peer did.
#[derive(Debug)]
pub struct AuthThrottle {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

#[derive(Debug, Default)]
struct Peer {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

impl Peer {
    fn forget_before(&mut self, cutoff: Option<Instant>) {
        if let Some(cutoff) = cutoff {
            while self.failures.front().is_some_and(|at| *at < cutoff) {
                self.failures.pop_front();
            }
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.failures.is_empty() && self.locked_until.is_none_or(|until| until <= now)
    }
}

impl Default for AuthThrottle {
    /// 20 failures a minute lock a peer out for five minutes.
    fn default() -> Self {
        AuthThrottle::new(20, Duration::from_secs(60), Duration::from_secs(300))
    }
}

impl AuthThrottle {
    /// At `max_failures` (at least 1) failed authentications within `window`, a peer is
    /// refused for `lockout`.
    pub fn new(max_failures: u32, window: Duration, lockout: Duration) -> Self {
        AuthThrottle {
            max_failures: max_failures.max(1),
            window,
            lockout,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// How long the lockout lasts.
    pub fn lockout(&self) -> Duration {
        self.lockout
    }

    /// How much longer `peer` is locked out, if it is.
    pub fn locked(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = peers.get(&peer)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed authentication by `peer`; returns the number of failures in the
    /// window when this one starts a lockout.
    pub fn failed(&self, peer: IpAddr, now: Instant) -> Option<u32> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.len() > SWEEP_ABOVE {
            let cutoff = now.checked_sub(self.window);
            peers.retain(|_, p| {
                p.forget_before(cutoff);
                !p.is_idle(now)
            });
        }
        let entry = peers.entry(peer).or_default();
        entry.forget_before(now.checked_sub(self.window));
        entry.failures.push_back(now);
        if entry.failures.len() < self.max_failures as usize {
            return None;
        }
        let count = entry.failures.len() as u32;
        entry.failures.clear();
        entry.locked_until = Some(now + self.lockout);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_peer_is_locked_out_at_the_limit_and_only_for_the_lockout() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.failed(ip(1), t0), None);
        assert_eq!(throttle.failed(ip(1), t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.locked(ip(1), t0 + Duration::from_secs(1)), None);
        assert_eq!(throttle.failed(ip(1), t0 + Duration::from_secs(2)), Some(3));
        assert_eq!(
            throttle.locked(ip(1), t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(7))
        );
        // Another address is not affected.
        assert_eq!(throttle.locked(ip(2), t0 + Duration::from_secs(5)), None);
        assert_eq!(throttle.locked(ip(1), t0 + Duration::from_secs(12)), None);
        // After the lockout the count starts again.
        assert_eq!(throttle.failed(ip(1), t0 + Duration::from_secs(13)), None);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let throttle = AuthThrottle::new(2, Duration::from_secs(60), Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.failed(ip(1), t0), None);
        assert_eq!(throttle.failed(ip(1), t0 + Duration::from_secs(61)), None);
        assert_eq!(
            throttle.failed(ip(1), t0 + Duration::from_secs(62)),
            Some(2)
        );
    }

    #[test]
    fn idle_peers_are_forgotten_when_many_are_remembered() {
        let throttle = AuthThrottle::new(5, Duration::from_secs(1), Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..=SWEEP_ABOVE as u32 {
            throttle.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        throttle.failed(ip(1), t0 + Duration::from_secs(5));
        let remembered = throttle.peers.lock().unwrap().len();
        assert_eq!(remembered, 1, "only the fresh failure is kept");
    }
}
