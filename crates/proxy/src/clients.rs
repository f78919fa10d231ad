//! A cap on what one client address may hold open at once (issue 11): each request counts
//! from its first hook to the end of its response (a WebSocket or an event stream until it
//! closes; each HTTP/2 stream on its own). Past `max_connections_per_client`, a request is
//! answered 429 at once, so one address cannot tie up the proxy's memory and upstream
//! connections for everyone. The address is the TCP peer's (a load balancer in front makes
//! every client one address: raise the cap there); an IPv6 peer counts by its /64, the
//! block one subscriber usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Requests open now, per client address.
#[derive(Debug, Default)]
pub struct OpenPerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open request of a client; dropping it (with the request's context) counts it closed.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Arc<OpenPerClient>,
    ip: IpAddr,
}

impl OpenPerClient {
    /// Counts a new request from `ip`, unless it already has `max` open.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let ip = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            ip,
        })
    }

    /// Requests open now from `ip`.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// The address a request counts against: IPv4 as it is, IPv6 by its /64 (IPv4-mapped
/// IPv6 as the IPv4 address).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_a_slot_back_when_a_request_ends() {
        let counts = Arc::new(OpenPerClient::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.admit(a, 2).unwrap();
        let _second = counts.admit(a, 2).unwrap();
        assert!(counts.admit(a, 2).is_none(), "a third at once is refused");
        assert!(
            counts.admit(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(counts.open(a), 1);
        assert!(counts.admit(a, 2).is_some(), "room again once one ended");
    }

    #[test]
    fn an_ipv6_block_counts_as_one_client() {
        let counts = Arc::new(OpenPerClient::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_block: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_block: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = counts.admit(one, 1).unwrap();
        assert!(counts.admit(same_block, 1).is_none());
        assert!(counts.admit(other_block, 1).is_some());
    }

    #[test]
    fn addresses_with_nothing_open_are_forgotten() {
        let counts = Arc::new(OpenPerClient::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        drop(counts.admit(a, 1));
        assert!(counts.open.lock().unwrap().is_empty());
    }
}
