//! The collector of a node's registry: [`Scrape::gather`] reads the node's state once per scrape (it is async: the
//! cluster runtime sits behind a tokio mutex), and [`NodeCollector`] encodes it with the node's atomic counters,
//! read as they are at that moment. Every metric is named and described here, in the order README.md lists them.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::super::Node;
use crate::connection::counters::{InvocationOutcome, PROTOCOLS, TRANSPORTS};
use crate::connection::{BoundsHit, ConnectionCounters, DeliveryKind, Limits};
use crate::cluster::link::PeerLinkFigures;
use crate::connection::counters::DisconnectReason;
use crate::mesh::{MeshBoundsHit, MeshCounters, RelayFigures};

/// One hub's figures on this node.
#[derive(Debug, Default)]
pub(super) struct HubFigures {
    name: String,
    connections: usize,
    groups_owned: usize,
    memberships: usize,
}

/// The cluster as this node sees it, and its cluster tasks' counters.
#[derive(Debug, Default)]
pub(super) struct ClusterFigures {
    live: usize,
    dead: usize,
    /// Per live peer: its name and whether the link to it is up.
    links: Vec<(String, bool)>,
    link_frames_received: u64,
    link_bytes_received: u64,
    /// Per peer name (the live peers of the last view): link counts and queue depth.
    link_peers: Vec<PeerLinkFigures>,
    membership_changes: u64,
    declared_dead: u64,
}

/// What the mesh counted of held and re-sent group sends and of re-homing.
#[derive(Debug, Default)]
pub(super) struct SendFigures {
    held_now: usize,
    held: u64,
    resent: u64,
    missed_resent: u64,
    rehomes: u64,
    rehome_seconds_total: f64,
    rehome_last_seconds: f64,
}

impl SendFigures {
    fn of(counters: &MeshCounters, held_now: usize) -> SendFigures {
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let seconds = |micros: u64| micros as f64 / 1e6;
        SendFigures {
            held_now,
            held: read(&counters.sends_held),
            resent: read(&counters.sends_resent),
            missed_resent: read(&counters.missed_resent),
            rehomes: read(&counters.rehomes),
            rehome_seconds_total: seconds(read(&counters.rehome_micros_total)),
            rehome_last_seconds: seconds(read(&counters.rehome_last_micros)),
        }
    }
}

/// What one scrape read from the node's state.
#[derive(Debug, Default)]
pub(super) struct Scrape {
    hubs: Vec<HubFigures>,
    relays: RelayFigures,
    tunnels: usize,
    tunnels_fell_behind: u64,
    moving_out: usize,
    kept_here: usize,
    kept_elsewhere: usize,
    keeping_outbox: usize,
    kept_history: usize,
    taken_over: u64,
    keeping_refused: u64,
    keeping_stale: u64,
    keeping_origins_refused: u64,
    took_remembered: usize,
    took_unchecked: u64,
    /// The mesh's bound counters, by bound.
    mesh_bounds: Vec<(&'static str, u64)>,
    sends: SendFigures,
    ready: bool,
    uptime_seconds: u64,
    cluster: Option<ClusterFigures>,
}

impl Scrape {
    /// Reads `node`'s state now.
    pub(super) async fn gather(node: &Node) -> Scrape {
        let mut hubs: Vec<HubFigures> = node
            .inner
            .endpoints
            .values()
            .map(|endpoint| &endpoint.context)
            .chain(node.inner.send_only.iter())
            .map(|context| HubFigures {
                name: context.hub().name().to_owned(),
                connections: context.local_connection_count(),
                groups_owned: 0,
                memberships: context.local_membership_count(),
            })
            .collect();
        for key in node.inner.router.owned_groups() {
            if let Some(hub) = hubs.iter_mut().find(|hub| *hub.name == *key.hub) {
                hub.groups_owned += 1;
            }
        }
        hubs.sort_by(|a, b| a.name.cmp(&b.name));
        let ready = node.readiness().await.is_ready();
        let uptime_seconds = node.inner.started.elapsed().map(|uptime| uptime.as_secs()).unwrap_or(0);
        let cluster = node.inner.cluster.lock().await;
        let cluster = cluster.as_ref().map(|cluster| {
            let view = cluster.membership().view();
            let health = cluster.health();
            ClusterFigures {
                live: view.live.len(),
                dead: view.dead.len(),
                links: view
                    .live
                    .iter()
                    .filter(|member| member.id != view.self_id)
                    .map(|member| (member.id.name.to_string(), health.link_up(&member.id)))
                    .collect(),
                link_frames_received: health.counters.link_frames_received(),
                link_bytes_received: health.counters.link_bytes_received(),
                link_peers: cluster.links().figures(),
                membership_changes: health.counters.membership_changes(),
                declared_dead: health.counters.declared_dead(),
            }
        });
        Scrape {
            hubs,
            relays: node.inner.router.relay_figures(),
            mesh_bounds: mesh_bounds(&node.inner.router.bounds_hit()),
            sends: SendFigures::of(&node.inner.router.mesh_counters(), node.inner.router.sends_held_now()),
            tunnels: node.tunnels().open_count(),
            tunnels_fell_behind: node.tunnels().fell_behind(),
            moving_out: node.endpoints().map(|endpoint| endpoint.moving_out_count()).sum(),
            kept_here: node.keeping().kept_count(),
            kept_elsewhere: node.keeping().keeping_count(),
            keeping_outbox: node.keeping().outbox_frames(),
            kept_history: node.inner.router.kept_history_len(),
            taken_over: node.keeping().adopted(),
            keeping_refused: node.keeping().refused(),
            keeping_stale: node.keeping().stale(),
            keeping_origins_refused: node.keeping().origins_refused(),
            took_remembered: node.keeping().took_counts().0,
            took_unchecked: node.keeping().took_counts().1,
            ready,
            uptime_seconds,
            cluster,
        }
    }
}

/// The mesh's bound counters as (bound, hits).
fn mesh_bounds(hit: &MeshBoundsHit) -> Vec<(&'static str, u64)> {
    [
        ("retained_evicted", &hit.retained_evicted),
        ("held_dropped", &hit.held_dropped),
        ("deferred_dropped", &hit.deferred_dropped),
        ("orphans_dropped", &hit.orphans_dropped),
        ("ops_refused", &hit.ops_refused),
        ("mailbox_refused", &hit.mailbox_refused),
        ("delivered_untracked", &hit.delivered_untracked),
        ("departed_evicted", &hit.departed_evicted),
        ("fanout_dropped", &hit.fanout_dropped),
        ("last_sent_cleared", &hit.last_sent_cleared),
        ("waiting_refused", &hit.waiting_refused),
        ("gaps_given_up", &hit.gaps_given_up),
        ("kept_groups_refused", &hit.kept_groups_refused),
        ("kept_history_gaps", &hit.kept_history_gaps),
        ("offers_dropped", &hit.offers_dropped),
        ("kept_broadcasts_evicted", &hit.kept_broadcasts_evicted),
        ("direct_retained_evicted", &hit.direct_retained_evicted),
        ("kept_direct_dropped", &hit.kept_direct_dropped),
        ("missed_refused", &hit.missed_refused),
        ("left_notes_refused", &hit.left_notes_refused),
    ]
    .into_iter()
    .map(|(bound, hits)| (bound, hits.load(Ordering::Relaxed)))
    .collect()
}

/// Encodes a node's figures on each scrape: the last [`Scrape`] and the counters of its limits.
#[derive(Debug)]
pub(super) struct NodeCollector {
    counters: Arc<ConnectionCounters>,
    bounds: Arc<BoundsHit>,
    scrape: Arc<parking_lot::Mutex<Scrape>>,
}

impl NodeCollector {
    pub(super) fn new(limits: &Limits, scrape: Arc<parking_lot::Mutex<Scrape>>) -> Self {
        NodeCollector {
            counters: limits.counters.clone(),
            bounds: limits.bounds_hit.clone(),
            scrape,
        }
    }
}

/// One metric with one sample per label set in `rows` (no rows: the metric is described, without samples).
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One counter without labels (`_total` is appended to `name`).
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let value = ConstCounter::new(value);
    value.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// One gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let value = ConstGauge::new(value);
    value.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let encoder = &mut encoder;
        let counters = &self.counters;
        let scrape = self.scrape.lock();
        let by_transport = || {
            TRANSPORTS
                .iter()
                .flat_map(|transport| PROTOCOLS.iter().map(move |protocol| (*transport, *protocol)))
        };

        family(
            encoder,
            "hubmesh_connections",
            "Connections open on this node, by hub.",
            MetricType::Gauge,
            scrape
                .hubs
                .iter()
                .map(|hub| ([("hub", hub.name.as_str())], ConstGauge::new(count(hub.connections)))),
        )?;
        family(
            encoder,
            "hubmesh_transport_connections",
            "Connections open on this node, by transport and protocol.",
            MetricType::Gauge,
            by_transport().map(|(transport, protocol)| {
                (
                    [("transport", transport.name()), ("protocol", protocol.name())],
                    ConstGauge::new(counters.open(transport, protocol)),
                )
            }),
        )?;
        family(
            encoder,
            "hubmesh_connects",
            "Connections that completed their handshake, by transport and protocol.",
            MetricType::Counter,
            by_transport().map(|(transport, protocol)| {
                (
                    [("transport", transport.name()), ("protocol", protocol.name())],
                    ConstCounter::new(counters.connects(transport, protocol)),
                )
            }),
        )?;
        family(
            encoder,
            "hubmesh_disconnects",
            "Connections that ended, by reason.",
            MetricType::Counter,
            DisconnectReason::ALL
                .iter()
                .map(|reason| ([("reason", reason.label())], ConstCounter::new(counters.disconnects(*reason)))),
        )?;
        counter(
            encoder,
            "hubmesh_client_messages_received",
            "Hub messages received from clients (invocations, stream items, completions, pings, ...).",
            counters.messages_received(),
        )?;
        counter(
            encoder,
            "hubmesh_client_received_bytes",
            "Bytes read from client transports.",
            counters.bytes_received_total(),
        )?;
        counter(
            encoder,
            "hubmesh_client_written_bytes",
            "Bytes written to client transports.",
            counters.bytes_written_total(),
        )?;
        family(
            encoder,
            "hubmesh_invocations",
            "Hub method invocations from clients, by outcome.",
            MetricType::Counter,
            InvocationOutcome::ALL
                .iter()
                .map(|outcome| ([("outcome", outcome.label())], ConstCounter::new(counters.invocations(*outcome)))),
        )?;
        family(
            encoder,
            "hubmesh_deliveries",
            "Messages handed to this node's connections, one per recipient, by what the send addressed.",
            MetricType::Counter,
            DeliveryKind::ALL
                .iter()
                .map(|kind| ([("kind", kind.label())], ConstCounter::new(counters.deliveries(*kind)))),
        )?;
        counter(
            encoder,
            "hubmesh_stateful_resumes",
            "Stateful-reconnect connections resumed on a new transport.",
            counters.resumes(),
        )?;
        counter(
            encoder,
            "hubmesh_keeping_receipts_unheld",
            "Client records of kept stateful connections that ran without their keeper holding their receipt \
             within the wait (src/connection/keeper.rs, RECEIPT_WAIT): a take-over may run them again.",
            counters.receipts_unheld(),
        )?;
        family(
            encoder,
            "hubmesh_groups_owned",
            "Groups (named and user) this node owns, by hub.",
            MetricType::Gauge,
            scrape
                .hubs
                .iter()
                .map(|hub| ([("hub", hub.name.as_str())], ConstGauge::new(count(hub.groups_owned)))),
        )?;
        family(
            encoder,
            "hubmesh_group_memberships",
            "Group memberships (named groups and users) held by this node's connections, by hub.",
            MetricType::Gauge,
            scrape
                .hubs
                .iter()
                .map(|hub| ([("hub", hub.name.as_str())], ConstGauge::new(count(hub.memberships)))),
        )?;
        let bounds = &self.bounds;
        family(
            encoder,
            "hubmesh_bounds_hit",
            "Times an input bound was hit, by bound.",
            MetricType::Counter,
            [
                ("queued_invocations", &bounds.queued_invocations),
                ("streams", &bounds.streams),
                ("abandoned_results", &bounds.abandoned_results),
                ("direct_origins_untracked", &bounds.direct_origins_untracked),
                ("groups_got_untracked", &bounds.groups_got_untracked),
                ("negotiations", &bounds.negotiations),
                ("connections", &bounds.connections),
                ("negotiate_rate", &bounds.negotiate_rate),
                ("rate_addresses", &bounds.rate_addresses),
                ("bodies", &bounds.bodies),
            ]
            .map(|(bound, hits)| ([("bound", bound)], ConstCounter::new(hits.load(Ordering::Relaxed)))),
        )?;
        family(
            encoder,
            "hubmesh_mesh_bounds_hit",
            "Times a bound of the mesh (the cluster as backplane) was hit, by bound (docs/semantics.md, Bounds).",
            MetricType::Counter,
            scrape
                .mesh_bounds
                .iter()
                .map(|(bound, hits)| ([("bound", *bound)], ConstCounter::new(*hits))),
        )?;
        gauge(
            encoder,
            "hubmesh_adopted_out_connections",
            "Connections negotiated on this node that run on other nodes (a load balancer sent their transport there).",
            count(scrape.relays.adopted_out),
        )?;
        gauge(
            encoder,
            "hubmesh_location_hints",
            "Connections of other nodes' negotiation whose server this node knows, to send to them straight.",
            count(scrape.relays.hints),
        )?;
        gauge(
            encoder,
            "hubmesh_tunnels",
            "Tunnel ends open: stateful connections whose client came back to another node than the one running them.",
            count(scrape.tunnels),
        )?;
        gauge(
            encoder,
            "hubmesh_connections_moving_out",
            "Stateful connections being moved from this node right now (a drain, or a client that came back to another node).",
            count(scrape.moving_out),
        )?;
        counter(
            encoder,
            "hubmesh_adoptions_refused",
            "Transports refused because too many connections negotiated here ran on other nodes (503).",
            scrape.relays.adoptions_refused,
        )?;
        gauge(
            encoder,
            "hubmesh_kept_connections",
            "Copies of other nodes' stateful connections kept here, to take them over if their node dies (at most 262,144).",
            count(scrape.kept_here),
        )?;
        gauge(
            encoder,
            "hubmesh_connections_kept_elsewhere",
            "Stateful connections running here whose copy a peer keeps.",
            count(scrape.kept_elsewhere),
        )?;
        gauge(
            encoder,
            "hubmesh_keeping_outbox_frames",
            "Keeping frames waiting for their peers (at most 65,536 per peer; past it the connection runs unkept).",
            count(scrape.keeping_outbox),
        )?;
        gauge(
            encoder,
            "hubmesh_kept_history_sends",
            "Group sends held here for the kept connections' groups, to give a taken-over connection what it missed (at most 4,096 per group, none older than 15 s).",
            count(scrape.kept_history),
        )?;
        counter(
            encoder,
            "hubmesh_connections_taken_over",
            "Stateful connections this node took over after the node running them died.",
            scrape.taken_over,
        )?;
        counter(
            encoder,
            "hubmesh_keeping_refused",
            "Copies refused or dropped at their bounds, and take-overs that failed (the connection runs or ends unkept).",
            scrape.keeping_refused,
        )?;
        counter(
            encoder,
            "hubmesh_keeping_stale",
            "Stale copies of stateful connections dropped, and take-overs of stale copies undone, because another keeper held a fresher copy.",
            scrape.keeping_stale,
        )?;
        counter(
            encoder,
            "hubmesh_keeping_origins_refused",
            "Records of stateful connections whose sender a copy could not note, 64 senders of its group being noted already (a resume may give those again).",
            scrape.keeping_origins_refused,
        )?;
        gauge(
            encoder,
            "hubmesh_kept_take_overs_remembered",
            "Take-overs of the last minute remembered to compare with other keepers' copies (at most 262,144).",
            count(scrape.took_remembered),
        )?;
        counter(
            encoder,
            "hubmesh_keeping_take_overs_unchecked",
            "Take-overs started without comparing copies with the peers, 262,144 others being remembered already.",
            scrape.took_unchecked,
        )?;
        counter(
            encoder,
            "hubmesh_tunnel_ends_fell_behind",
            "Tunnel ends ended because their queue of 256 messages was full (the client reconnects again).",
            scrape.tunnels_fell_behind,
        )?;
        counter(
            encoder,
            "hubmesh_sends_passed_on",
            "Sends to connections negotiated here, passed on to the node running them.",
            scrape.relays.passed_on,
        )?;
        counter(
            encoder,
            "hubmesh_sends_passed_home",
            "Sends by id that reached this node by a sender's stale location hint, passed on to the connection's home.",
            scrape.relays.passed_home,
        )?;
        counter(
            encoder,
            "hubmesh_sends_offered",
            "Sends a restarted node offered to every peer in its first 10 s, for connections of its name it did not know yet.",
            scrape.relays.offered,
        )?;
        counter(
            encoder,
            "hubmesh_hint_switches_given_up",
            "Switches to a connection's server given up (fence unanswered in time, or too many sends held).",
            scrape.relays.fences_given_up,
        )?;
        counter(
            encoder,
            "hubmesh_cut_off_closes",
            "Times this node closed its connections because most peers had declared it dead.",
            scrape.relays.cut_off_closes,
        )?;
        gauge(encoder, "hubmesh_ready", "1 when the node answers /readyz with 200, else 0.", i64::from(scrape.ready))?;
        gauge(
            encoder,
            "hubmesh_uptime_seconds",
            "Seconds since the node was built.",
            i64::try_from(scrape.uptime_seconds).unwrap_or(i64::MAX),
        )?;
        let cluster = scrape.cluster.as_ref();
        family(
            encoder,
            "hubmesh_members",
            "Members of this node's membership view, by state (live includes this node; a single node counts itself).",
            MetricType::Gauge,
            [
                ("live", cluster.map_or(1, |cluster| count(cluster.live))),
                ("dead", cluster.map_or(0, |cluster| count(cluster.dead))),
            ]
            .map(|(state, members)| ([("state", state)], ConstGauge::new(members))),
        )?;
        family(
            encoder,
            "hubmesh_link_up",
            "1 when the link to a live peer is up, else 0, by peer.",
            MetricType::Gauge,
            cluster
                .into_iter()
                .flat_map(|cluster| cluster.links.iter())
                .map(|(peer, up)| ([("peer", peer.as_str())], ConstGauge::new(i64::from(*up)))),
        )?;
        let cluster_count = |read: fn(&ClusterFigures) -> u64| cluster.map_or(0, read);
        counter(
            encoder,
            "hubmesh_link_received_frames",
            "Frames received over links from peers.",
            cluster_count(|cluster| cluster.link_frames_received),
        )?;
        counter(
            encoder,
            "hubmesh_link_received_bytes",
            "Bytes of frames received over links from peers.",
            cluster_count(|cluster| cluster.link_bytes_received),
        )?;
        encode_link_peers(encoder, cluster.map_or(&[], |cluster| cluster.link_peers.as_slice()))?;
        encode_sends(encoder, &scrape.sends)?;
        counter(
            encoder,
            "hubmesh_membership_changes",
            "Changes of this node's membership view since it joined.",
            cluster_count(|cluster| cluster.membership_changes),
        )?;
        counter(
            encoder,
            "hubmesh_nodes_declared_dead",
            "Members this node's view declared dead (failed, left, or superseded by a new generation).",
            cluster_count(|cluster| cluster.declared_dead),
        )?;
        Ok(())
    }
}

/// The per-peer link metrics: one sample per counted peer (the live peers of the last view).
fn encode_link_peers(encoder: &mut DescriptorEncoder<'_>, peers: &[PeerLinkFigures]) -> fmt::Result {
    let per_peer = |read: fn(&PeerLinkFigures) -> u64| {
        peers
            .iter()
            .map(move |figures| ([("peer", figures.peer.as_str())], ConstCounter::new(read(figures))))
    };
    family(
        encoder,
        "hubmesh_link_peer_sent_frames",
        "Frames queued for a peer's link, by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.frames_sent),
    )?;
    family(
        encoder,
        "hubmesh_link_peer_sent_bytes",
        "Bytes of frames queued for a peer's link, by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.bytes_sent),
    )?;
    family(
        encoder,
        "hubmesh_link_peer_received_frames",
        "Frames received from a peer's link, by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.frames_received),
    )?;
    family(
        encoder,
        "hubmesh_link_peer_received_bytes",
        "Bytes of frames received from a peer's link, by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.bytes_received),
    )?;
    family(
        encoder,
        "hubmesh_link_queue_frames",
        "Frames waiting in a peer's link queue now, by peer.",
        MetricType::Gauge,
        peers
            .iter()
            .map(|figures| ([("peer", figures.peer.as_str())], ConstGauge::new(count(figures.queue_depth)))),
    )?;
    family(
        encoder,
        "hubmesh_link_queue_full",
        "Sends refused because a peer's link queue was full, by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.queue_full),
    )?;
    family(
        encoder,
        "hubmesh_link_stalls",
        "Times frames for a peer waited for it to catch up (its credit window was used up), by peer.",
        MetricType::Counter,
        per_peer(|figures| figures.stalls),
    )
}

/// Held and re-sent group sends, and re-homing.
fn encode_sends(encoder: &mut DescriptorEncoder<'_>, sends: &SendFigures) -> fmt::Result {
    gauge(
        encoder,
        "hubmesh_group_sends_waiting",
        "Group sends held at this node now, waiting for their owner.",
        count(sends.held_now),
    )?;
    counter(
        encoder,
        "hubmesh_group_sends_held",
        "Group sends held at this node (owner unreachable, or earlier sends still held).",
        sends.held,
    )?;
    counter(
        encoder,
        "hubmesh_group_sends_resent",
        "Group sends sent again to a new owner because the owner they were handed to left.",
        sends.resent,
    )?;
    counter(
        encoder,
        "hubmesh_group_sends_missed_resent",
        "Group sends an owner sent again to a node it had declared dead, once that node was back.",
        sends.missed_resent,
    )?;
    counter(encoder, "hubmesh_rehomes", "Membership changes this node finished re-homing after.", sends.rehomes)?;
    ConstCounter::new(sends.rehome_seconds_total).encode(encoder.encode_descriptor(
        "hubmesh_rehome_seconds",
        "Time spent re-homing: from each membership change until the owner had the snapshots it waited for.",
        None,
        MetricType::Counter,
    )?)?;
    ConstGauge::new(sends.rehome_last_seconds).encode(encoder.encode_descriptor(
        "hubmesh_rehome_last_seconds",
        "How long the last re-homing took.",
        None,
        MetricType::Gauge,
    )?)
}
