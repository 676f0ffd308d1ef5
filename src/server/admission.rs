//! Who gets a connection: the rules that keep one client from locking others out before or after it
//! authenticates.
//!
//! Before authentication nobody is turned away. Unfinished handshakes (and connections refused a slot, which
//! live only long enough to say why) are capped in all; a new connection over that cap closes the oldest one of
//! the address holding the most, so a flood from a few addresses makes room for everyone else first, and a
//! client that completes its handshake promptly is never the one closed unless hundreds of newer connections
//! arrive while it handshakes. After the TLS handshake the client has an identity, and established
//! connections are capped in all (`--max-connections`) and per identity (`--max-connections-per-client`); a
//! connection over either cap answers its calls RESOURCE_EXHAUSTED, naming the flag, and is closed. An identity's
//! calls in flight (`--max-calls-per-client`) and its StreamOutput calls among them (`--max-followers-per-client`)
//! are capped across all its connections: each holds server memory (a follower up to h2's send buffer), and
//! without the caps one identity's connections times 256 streams could hold a great deal of it. A call over a
//! cap is answered RESOURCE_EXHAUSTED, naming the flag; the connection goes on.

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

/// A cap a call was refused for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCap {
    /// The identity has `--max-calls-per-client` calls in flight.
    Calls { identity: String, max: usize },
    /// The identity has `--max-followers-per-client` streams in flight: StreamOutput and reflection calls, each
    /// of which may hold h2's send buffer.
    Followers { identity: String, max: usize },
}

impl fmt::Display for CallCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallCap::Calls { identity, max } => write!(
                f,
                "{identity} already has {max} calls in flight, the server's limit (--max-calls-per-client); wait \
                 for some to finish"
            ),
            CallCap::Followers { identity, max } => write!(
                f,
                "{identity} already streams output or reflection on {max} calls, the server's limit \
                 (--max-followers-per-client); end some first"
            ),
        }
    }
}

/// The per-identity caps, and what the server's connections and calls hold against them.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    established: usize,
    connections: PerIdentity,
    calls: PerIdentity,
    followers: PerIdentity,
}

/// The caps on what one identity holds at once.
#[derive(Debug, Clone, Copy)]
pub struct ClientCaps {
    pub connections: usize,
    pub calls: usize,
    pub followers: usize,
}

impl Admission {
    pub fn new(max_connections: usize, per_client: ClientCaps) -> Self {
        Admission {
            max_connections,
            established: 0,
            connections: PerIdentity::new(per_client.connections),
            calls: PerIdentity::new(per_client.calls),
            followers: PerIdentity::new(per_client.followers),
        }
    }

    /// A connection finished its TLS handshake as `caller` (or without an identity): counts it, or says which
    /// cap it is over.
    pub fn admit(&mut self, caller: &Result<Caller, String>) -> Result<(), ConnectionCap> {
        if self.established >= self.max_connections {
            return Err(ConnectionCap::Total { max: self.max_connections });
        }
        if let Ok(caller) = caller {
            self.connections
                .take(&caller.identity)
                .map_err(|max| ConnectionCap::PerClient { identity: caller.identity.clone(), max })?;
        }
        self.established += 1;
        Ok(())
    }

    /// An admitted connection closed.
    pub fn release(&mut self, caller: &Result<Caller, String>) {
        self.established -= 1;
        if let Ok(caller) = caller {
            self.connections.give_back(&caller.identity);
        }
    }

    /// A call arrived from `identity`: counts it, or says it is over the cap.
    pub fn admit_call(&mut self, identity: &str) -> Result<(), CallCap> {
        self.calls.take(identity).map_err(|max| CallCap::Calls { identity: identity.to_string(), max })
    }

    /// A counted call ended.
    pub fn release_call(&mut self, identity: &str) {
        self.calls.give_back(identity);
    }

    /// A call from `identity` is about to stream output: counts it, or says it is over the cap.
    pub fn admit_follower(&mut self, identity: &str) -> Result<(), CallCap> {
        self.followers.take(identity).map_err(|max| CallCap::Followers { identity: identity.to_string(), max })
    }

    /// A counted follower ended.
    pub fn release_follower(&mut self, identity: &str) {
        self.followers.give_back(identity);
    }
}

/// A count per identity, under a cap; identities holding nothing take no room.
#[derive(Debug)]
struct PerIdentity {
    max: usize,
    held: HashMap<String, usize>,
}

impl PerIdentity {
    fn new(max: usize) -> Self {
        PerIdentity { max, held: HashMap::new() }
    }

    /// One more for `identity`, or the cap it is at.
    fn take(&mut self, identity: &str) -> Result<(), usize> {
        let held = self.held.get(identity).copied().unwrap_or(0);
        if held >= self.max {
            return Err(self.max);
        }
        self.held.insert(identity.to_string(), held + 1);
        Ok(())
    }

    fn give_back(&mut self, identity: &str) {
        if let Some(held) = self.held.get_mut(identity) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(identity);
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
        let mut admission = Admission::new(3, ClientCaps { connections: 2, calls: 2, followers: 1 });
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
        assert_eq!(admission.connections.held.get("alice"), Some(&1));
    }

    #[test]
    fn calls_and_followers_are_capped_per_identity_and_given_back() {
        let mut admission = Admission::new(3, ClientCaps { connections: 2, calls: 2, followers: 1 });
        assert_eq!(admission.admit_call("alice"), Ok(()));
        assert_eq!(admission.admit_call("alice"), Ok(()));
        let over = admission.admit_call("alice").unwrap_err();
        assert_eq!(over, CallCap::Calls { identity: "alice".into(), max: 2 });
        assert!(over.to_string().contains("(--max-calls-per-client)"), "{over}");
        assert_eq!(admission.admit_call("bob"), Ok(()), "another identity has its own count");
        admission.release_call("alice");
        assert_eq!(admission.admit_call("alice"), Ok(()));
        assert_eq!(admission.admit_follower("alice"), Ok(()));
        let over = admission.admit_follower("alice").unwrap_err();
        assert!(over.to_string().contains("(--max-followers-per-client)"), "{over}");
        admission.release_follower("alice");
        assert_eq!(admission.admit_follower("alice"), Ok(()));
        for _ in 0..2 {
            admission.release_call("alice");
        }
        admission.release_call("bob");
        admission.release_follower("alice");
        assert!(admission.calls.held.is_empty() && admission.followers.held.is_empty(), "nothing left counted");
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
