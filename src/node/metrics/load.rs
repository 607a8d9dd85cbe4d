//! The load a node publishes in gossip under [`LOAD_KEY`]: its connections, and how many deliveries and client
//! messages it has counted so far, as `"<connections> <deliveries> <messages>"`. Every node's status report then
//! shows every live member's load (a peer's as last gossiped, at most about a second and a gossip round old),
//! which is what the live page charts. Published every [`PUBLISH_EVERY`] while it changes; one small key per node.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::super::Node;
use crate::connection::DeliveryKind;

/// The membership key a node's load is published under.
pub(crate) const LOAD_KEY: &str = "load";

/// How often a node publishes its load (when it changed).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A node's load: what it serves now and what it has counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Connections open, all hubs.
    pub(crate) connections: u64,
    /// Messages handed to its connections so far, all kinds.
    pub(crate) deliveries: u64,
    /// Hub messages received from its clients so far.
    pub(crate) messages: u64,
}

impl Load {
    /// `node`'s load now.
    pub(crate) fn of(node: &Node) -> Load {
        let counters = &node.limits().counters;
        let connections: usize = node
            .inner
            .endpoints
            .values()
            .map(|endpoint| endpoint.context.local_connection_count())
            .sum();
        Load {
            connections: connections as u64,
            deliveries: DeliveryKind::ALL.iter().map(|kind| counters.deliveries(*kind)).sum(),
            messages: counters.messages_received(),
        }
    }

    /// The load a member published, if it published one that reads.
    pub(crate) fn parse(value: &str) -> Option<Load> {
        let mut figures = value.split(' ').map(str::parse::<u64>);
        let load = Load {
            connections: figures.next()?.ok()?,
            deliveries: figures.next()?.ok()?,
            messages: figures.next()?.ok()?,
        };
        figures.next().is_none().then_some(load)
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.connections, self.deliveries, self.messages)
    }
}

/// Publishes `node`'s load every [`PUBLISH_EVERY`] until it leaves its cluster (or is dropped). Call it once the
/// node has joined.
pub(crate) fn publish_load(node: &Node) {
    let weak = Arc::downgrade(&node.inner);
    let span = node.span().clone();
    tokio::spawn(
        async move {
            let mut published: Option<Load> = None;
            let mut ticks = tokio::time::interval(PUBLISH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let node = Node { inner };
                let load = Load::of(&node);
                let cluster = node.inner.cluster.lock().await;
                let Some(cluster) = cluster.as_ref() else { return };
                if published == Some(load) {
                    continue;
                }
                match cluster.membership().set(LOAD_KEY, &load.to_string()).await {
                    Ok(()) => published = Some(load),
                    Err(error) => {
                        tracing::warn!(%error, "could not publish the node's load");
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::Load;

    #[test]
    fn a_load_reads_back_as_published() {
        let load = Load {
            connections: 3,
            deliveries: 12_345,
            messages: 7,
        };
        assert_eq!(Load::parse(&load.to_string()), Some(load));
        assert_eq!(Load::parse("1 2"), None);
        assert_eq!(Load::parse("1 2 3 4"), None);
        assert_eq!(Load::parse("1 x 3"), None);
    }
}
