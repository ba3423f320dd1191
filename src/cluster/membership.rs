//! Which other nodes are alive, from what the bus hears of them. Sans-IO:
//! the bus thread reports what it heard and when, and asks what timed out.
//!
//! A node is up from the first message heard from it until it says it is
//! leaving or stays silent for `node_timeout`. Every message counts as a
//! sign of life, not only heartbeats. A node declared down and heard again
//! is up again: [`Membership::heard`] reports it as joined, so the bus asks
//! it for its presences afresh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fanout::broadcast::NodeId;

/// One other node, as last heard.
#[derive(Debug)]
struct Peer {
    name: String,
    last_heard: Instant,
}

/// The other nodes that are up.
#[derive(Debug)]
pub struct Membership {
    timeout: Duration,
    peers: HashMap<NodeId, Peer>,
}

impl Membership {
    /// No node known yet; nodes silent for `timeout` are down.
    pub fn new(timeout: Duration) -> Membership {
        Membership {
            timeout,
            peers: HashMap::new(),
        }
    }

    /// Something was heard from `node` (with its name, when the message
    /// carries it). Returns true when the node was not up before: it just
    /// started, or came back after being declared down.
    pub fn heard(&mut self, node: NodeId, name: Option<&str>, now: Instant) -> bool {
        match self.peers.get_mut(&node) {
            Some(peer) => {
                peer.last_heard = now;
                if let Some(name) = name {
                    if peer.name != name {
                        peer.name = name.to_string();
                    }
                }
                false
            }
            None => {
                let name = name.unwrap_or_default().to_string();
                self.peers.insert(
                    node,
                    Peer {
                        name,
                        last_heard: now,
                    },
                );
                true
            }
        }
    }

    /// `node` said it is leaving. Returns true when it was up.
    pub fn left(&mut self, node: NodeId) -> bool {
        self.peers.remove(&node).is_some()
    }

    /// Removes and returns every node silent for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let timeout = self.timeout;
        let silent: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.saturating_duration_since(peer.last_heard) > timeout)
            .map(|(node, _)| *node)
            .collect();
        for node in &silent {
            self.peers.remove(node);
        }
        silent
    }

    /// Number of other nodes up.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no other node is up.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The name of `node`, if up and named.
    pub fn name(&self, node: NodeId) -> Option<&str> {
        self.peers.get(&node).map(|peer| peer.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn nodes_are_up_while_heard_and_down_when_silent() {
        let start = Instant::now();
        let second = |n: u64| start + Duration::from_secs(n);
        let mut members = Membership::new(Duration::from_secs(5));
        assert!(members.heard(A, Some("a"), start));
        assert!(!members.heard(A, None, second(1)), "already up");
        assert!(members.heard(B, Some("b"), second(2)));
        assert_eq!(members.len(), 2);
        assert_eq!(members.name(A), Some("a"));
        assert!(members.expire(second(6)).is_empty(), "5 s is not over 5 s");
        assert_eq!(members.expire(second(7)), vec![A]);
        assert_eq!(members.len(), 1);
        // Heard again after being declared down: up again, and new.
        assert!(members.heard(A, Some("a"), second(8)));
        assert!(members.left(B));
        assert!(!members.left(B));
        assert!(members.left(A));
        assert!(members.is_empty());
    }
}
