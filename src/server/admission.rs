//! Who gets a connection: the rules that keep one client from locking others out before or after it
//! authenticates.
//!
//! Before authentication nobody is turned away. Unfinished handshakes (and connections refused a slot, which
//! live only long enough to say why) are capped in all; a new connection over that cap closes the oldest one of
//! the address holding the most, so a flood from a few addresses makes room for everyone else first, and a
//! client that completes its handshake promptly is never the one closed unless hundreds of newer connections
//! arrive while it handshakes. After the TLS handshake the client has an identity, and established
//! connections are capped in all (`--max-connections`) and per identity (`--max-connections-per-client`); a
//! connection over either cap answers its calls RESOURCE_EXHAUSTED, naming the flag, and is closed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::jobs::Caller;

/// A cap a connection was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCap {
    /// The server holds `--max-connections` established connections.
    Total { max: usize },
    /// The identity holds `--max-connections-per-client` of them.
    PerClient { identity: String, max: usize },
}

impl fmt::Display for ConnectionCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionCap::Total { max } => {
                write!(f, "the server holds {max} connections, its limit (--max-connections); retry later")
            }
            ConnectionCap::PerClient { identity, max } => write!(
                f,
                "{identity} already holds {max} connections, the server's limit (--max-connections-per-client); \
                 close some, or send more calls over each (a connection carries many at once)"
            ),
        }
    }
}

/// Established connections, counted in all and per identity.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_client: usize,
    established: usize,
    by_identity: HashMap<String, usize>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_client: usize) -> Self {
        Admission { max_connections, max_per_client, established: 0, by_identity: HashMap::new() }
    }

    /// A connection finished its TLS handshake as `caller` (or without an identity): counts it, or says which
    /// cap it is over.
    pub fn admit(&mut self, caller: &Result<Caller, String>) -> Result<(), ConnectionCap> {
        if self.established >= self.max_connections {
            return Err(ConnectionCap::Total { max: self.max_connections });
        }
        if let Ok(caller) = caller {
            let held = self.by_identity.get(&caller.identity).copied().unwrap_or(0);
            if held >= self.max_per_client {
                return Err(ConnectionCap::PerClient { identity: caller.identity.clone(), max: self.max_per_client });
            }
            self.by_identity.insert(caller.identity.clone(), held + 1);
        }
        self.established += 1;
        Ok(())
    }

    /// An admitted connection closed.
    pub fn release(&mut self, caller: &Result<Caller, String>) {
        self.established -= 1;
        if let Ok(caller) = caller {
            if let Some(held) = self.by_identity.get_mut(&caller.identity) {
                *held -= 1;
                if *held == 0 {
                    self.by_identity.remove(&caller.identity);
                }
            }
        }
    }
}

/// Of the connections holding a handshake slot, `(id, address)` in any order, the one to close to make room:
/// the oldest (lowest id) of the address holding the most.
pub fn handshake_to_evict(holders: impl Iterator<Item = (u64, IpAddr)>) -> Option<u64> {
    let mut by_address: HashMap<IpAddr, (usize, u64)> = HashMap::new();
    for (id, address) in holders {
        let entry = by_address.entry(address).or_insert((0, id));
        entry.0 += 1;
        entry.1 = entry.1.min(id);
    }
    // Most slots first; between equals, the address whose oldest connection is older.
    by_address.into_values().max_by_key(|&(held, oldest)| (held, std::cmp::Reverse(oldest))).map(|(_, oldest)| oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(identity: &str) -> Result<Caller, String> {
        Ok(Caller { identity: identity.into(), admin: false })
    }

    #[test]
    fn caps_count_established_connections_in_all_and_per_identity() {
        let mut admission = Admission::new(3, 2);
        assert_eq!(admission.admit(&caller("alice")), Ok(()));
        assert_eq!(admission.admit(&caller("alice")), Ok(()));
        let over = admission.admit(&caller("alice")).unwrap_err();
        assert_eq!(over, ConnectionCap::PerClient { identity: "alice".into(), max: 2 });
        assert!(over.to_string().contains("--max-connections-per-client"), "{over}");
        assert_eq!(admission.admit(&Err("no certificate identity".into())), Ok(()), "counted in all only");
        let over = admission.admit(&caller("bob")).unwrap_err();
        assert_eq!(over, ConnectionCap::Total { max: 3 });
        assert!(over.to_string().contains("--max-connections)"), "{over}");
        admission.release(&caller("alice"));
        assert_eq!(admission.admit(&caller("bob")), Ok(()), "a closed connection makes room");
        assert_eq!(admission.by_identity.get("alice"), Some(&1));
    }

    #[test]
    fn the_oldest_handshake_of_the_busiest_address_goes_first() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let holders = [(1, c), (2, a), (3, a), (4, b), (5, a), (6, b)];
        assert_eq!(handshake_to_evict(holders.into_iter()), Some(2));
        // Two addresses with as many each: the one whose oldest is older.
        let holders = [(7, b), (3, a), (8, b), (9, a)];
        assert_eq!(handshake_to_evict(holders.into_iter()), Some(3));
        assert_eq!(handshake_to_evict(std::iter::empty()), None);
    }
}
