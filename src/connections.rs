//! Connection caps: the gateway-wide and per-client-IP limits on open
//! connections, and the open-file limit they must stay under.
//!
//! At accept time only the TCP peer is known, so the per-IP cap counts peer
//! addresses. A peer inside a `--trusted-proxy` network is exempt: behind a
//! proxy every client shares its address, and the proxy enforces its own
//! per-client limits (the gateway-wide cap still applies to it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::ConnectionLimits;
use crate::http::error::ApiError;

/// File descriptors kept free below the open-file limit for everything that
/// is not a client connection: the store, external agents' pipes, refusals.
pub fn reserved_descriptors(open_file_limit: u64) -> u64 {
    (open_file_limit / 10).max(128).min(open_file_limit / 2)
}

/// The connection cap actually enforced: the configured one, lowered so that
/// a flood at the cap leaves [`reserved_descriptors`] free.
pub fn effective_max_connections(configured: usize, open_file_limit: Option<u64>) -> usize {
    match open_file_limit {
        Some(limit) => {
            let room = limit.saturating_sub(reserved_descriptors(limit)).max(1);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Raises the soft open-file limit (RLIMIT_NOFILE) to the hard limit and
/// returns the limit now in force, or `None` where it cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(error) => {
            tracing::warn!(%error, soft, hard, "could not raise the open-file limit");
            Some(soft)
        }
    }
}

/// Counts open connections, in total and per client address.
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: Option<usize>,
    exempt: Vec<ipnet::IpNet>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionLimiter {
    pub fn new(
        limits: &ConnectionLimits,
        max_total: usize,
        trusted_proxies: &[ipnet::IpNet],
    ) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max_total,
            max_per_ip: limits.max_connections_per_ip,
            exempt: trusted_proxies.to_vec(),
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Counts a new connection from `peer`, or says why it is refused.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, ApiError> {
        // An IPv4 client of a dual-stack listener counts as its IPv4 address.
        let peer = peer.to_canonical();
        let per_ip = self
            .max_per_ip
            .filter(|_| !self.exempt.iter().any(|network| network.contains(&peer)));
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(ApiError::TooManyConnections);
        }
        if let Some(limit) = per_ip {
            let held = counts.per_ip.get(&peer).copied().unwrap_or(0);
            if held >= limit {
                return Err(ApiError::TooManyConnectionsFromPeer { limit });
            }
            *counts.per_ip.entry(peer).or_insert(0) += 1;
        }
        counts.total += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            counted_ip: per_ip.map(|_| peer),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// A connection's place under the caps, shared by whatever serves it: the
/// connection's own task and, after an upgrade to WebSocket (`/arcp`), the
/// upgraded connection's task. The place is freed when the last holder ends.
#[derive(Clone)]
pub struct HeldConnection(#[allow(dead_code)] Arc<ConnectionPermit>);

impl HeldConnection {
    pub fn new(permit: ConnectionPermit) -> HeldConnection {
        HeldConnection(Arc::new(permit))
    }
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    counted_ip: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(ip) = self.counted_ip {
            if let Some(held) = counts.per_ip.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limiter(total: usize, per_ip: Option<usize>, trusted: &[&str]) -> Arc<ConnectionLimiter> {
        let mut limits = Config::development().connections;
        limits.max_connections_per_ip = per_ip;
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        ConnectionLimiter::new(&limits, total, &trusted)
    }

    #[test]
    fn caps_count_connections_and_free_them_on_drop() {
        let limiter = limiter(3, Some(2), &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert_eq!(
            limiter.admit(a).err(),
            Some(ApiError::TooManyConnectionsFromPeer { limit: 2 })
        );
        let _third = limiter.admit(b).unwrap();
        assert_eq!(limiter.admit(b).err(), Some(ApiError::TooManyConnections));
        drop(first);
        assert_eq!(limiter.open(), 2);
        let _again = limiter.admit(a).unwrap();
    }

    #[test]
    fn trusted_proxies_skip_the_per_ip_cap_only() {
        let limiter = limiter(3, Some(1), &["10.1.0.0/16"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| limiter.admit(proxy).unwrap()).collect();
        assert_eq!(
            limiter.admit(proxy).err(),
            Some(ApiError::TooManyConnections)
        );
        drop(held);
        assert_eq!(limiter.open(), 0);
    }

    #[test]
    fn the_cap_leaves_descriptors_in_reserve() {
        assert_eq!(effective_max_connections(50_000, Some(1024)), 896);
        assert_eq!(effective_max_connections(100, Some(1024)), 100);
        assert_eq!(effective_max_connections(50_000, Some(200)), 100);
        assert_eq!(effective_max_connections(50_000, Some(1_048_576)), 50_000);
        assert_eq!(effective_max_connections(7, None), 7);
    }
}
