//! Members of many small groups, for `rooms` and `storm`: member `index` belongs to group `index / group_size`,
//! sends `SendToGroup` to it on a schedule shared by all ([`Plan`]) and counts what its group delivers to it
//! ([`Tally`], [`Latencies`]). With a [`Reconnect`] policy (`storm`) a member whose connection closes comes back
//! as `withAutomaticReconnect` does (retries after 0, 2, 10 and 30 s) and joins its group again.
//!
//! A message's sequence number is `k * group_size + slot` (the sender's `k`th message, its slot in the group), so
//! each member keeps one bit per message its group can send. Duplicates are counted per connection, as hubmesh
//! promises them: a reconnected member starts afresh, and what it gets again of what its earlier connections got is
//! counted apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::readings::micros_since;
use super::setup::Setup;
use super::tasks::Progress;
use crate::bench::client::{Client, PING_EVERY, RS};
use crate::bench::stats::{parse_payload, payload, Histogram, Seen};
use crate::bench::BenchError;

/// The retry delays of `withAutomaticReconnect()` without arguments; after the last, the client gives up.
pub(super) const RECONNECT_DELAYS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];
/// How often a member tries to join its group again when the join fails (an owner that is not yet known dead).
const REJOIN_EVERY: Duration = Duration::from_millis(100);
/// Latency histograms are sharded to keep the lock uncontended without one histogram (35 KB) per member.
const SHARDS: usize = 32;

/// The schedule and shape every member shares.
pub(super) struct Plan {
    pub(super) members: usize,
    pub(super) group_size: usize,
    /// `SendToGroup` calls over the run, summed over members.
    pub(super) total_sends: u64,
    pub(super) sends_per_sec: f64,
    /// Groups are named `{prefix}-{group}`.
    pub(super) prefix: String,
    pub(super) payload_bytes: usize,
    /// The clock of the payloads' timestamps.
    pub(super) epoch: Instant,
    /// When the schedule starts.
    pub(super) started: Instant,
}

impl Plan {
    /// The group of member `index`, as a JSON string.
    pub(super) fn group_json(&self, index: usize) -> String {
        format!("\"{}-{}\"", self.prefix, index / self.group_size)
    }

    /// How many messages member `index` sends: send `n` of the run (`n = k * members + index`) is its `k`th.
    pub(super) fn sends_of(&self, index: usize) -> u64 {
        let index = index as u64;
        if index >= self.total_sends {
            0
        } else {
            (self.total_sends - 1 - index) / self.members as u64 + 1
        }
    }

    /// When member `index` sends its `k`th message.
    fn due(&self, index: usize, k: u64) -> Instant {
        let n = k * self.members as u64 + index as u64;
        self.started + Duration::from_secs_f64(n as f64 / self.sends_per_sec)
    }

    /// The sequence numbers a member can receive.
    fn seqs(&self) -> u64 {
        self.sends_of(0) * self.group_size as u64
    }
}

/// Counts over all members.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) sent: AtomicU64,
    /// Sends skipped because the member was reconnecting (as the official client's `send` fails meanwhile).
    pub(super) skipped: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) unexpected: AtomicU64,
    /// Microseconds after the epoch of the last new delivery.
    pub(super) last: AtomicU64,
    /// Connections that closed (a member may drop more than once).
    pub(super) dropped: AtomicUsize,
    /// … of them, connections of members whose first URL was not the killed node's.
    pub(super) dropped_elsewhere: AtomicUsize,
    /// Members connected again and back in their group.
    pub(super) rejoined: AtomicUsize,
    /// Join attempts that failed after a reconnect and were repeated.
    pub(super) rejoin_retries: AtomicU64,
    /// Messages a reconnected member got again on its new connection, having had them on an earlier one (a send
    /// re-sent after its owner died reaches the group's members of the time, the rejoined connection among them).
    pub(super) again_after_reconnect: AtomicU64,
    /// Reconnect attempts that failed (connect, handshake or join), and the first one's error.
    pub(super) failed_attempts: AtomicU64,
    pub(super) first_failure: Mutex<Option<String>>,
}

impl Tally {
    /// Member `index`'s reconnect attempt `attempt` (from 0) failed with `error`.
    fn attempt_failed(&self, index: usize, attempt: usize, error: &BenchError) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        self.first_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert_with(|| format!("member {index}, attempt {attempt}: {error}"));
    }
}

/// Latencies, in a few shards.
pub(super) struct Latencies {
    shards: Vec<Mutex<Histogram>>,
}

impl Latencies {
    pub(super) fn new() -> Latencies {
        Latencies {
            shards: (0..SHARDS).map(|_| Mutex::new(Histogram::new())).collect(),
        }
    }

    pub(super) fn record(&self, shard: usize, micros: u64) {
        if let Some(shard) = self.shards.get(shard % SHARDS) {
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .record(micros);
        }
    }

    /// All shards merged.
    pub(super) fn merged(&self) -> Histogram {
        let mut all = Histogram::new();
        for shard in &self.shards {
            all.merge(&shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        }
        all
    }
}

/// How a member comes back after its connection closes (`storm`).
pub(super) struct Reconnect {
    pub(super) setup: Arc<Setup>,
    /// The index of the killed node's URL.
    pub(super) killed_url: usize,
    /// When the node was killed, in microseconds after the epoch (`u64::MAX` before).
    pub(super) storm_from: AtomicU64,
    /// When every dropped member was back, in microseconds after the epoch (`u64::MAX` before).
    pub(super) storm_until: AtomicU64,
    /// The latencies of messages sent during the storm, as members that never dropped got them (whenever).
    pub(super) survivors: Latencies,
    /// Per reconnected member: from its connection's close to being back in its group.
    pub(super) back_after: Latencies,
}

/// What the members share.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) tally: Tally,
    pub(super) latency: Latencies,
    pub(super) progress: Progress,
    pub(super) reconnect: Option<Reconnect>,
}

/// One member until `stop`: sends on schedule, counts deliveries, pings; with a reconnect policy, comes back after
/// its connection closes. An error of any member counts as a failed client. Returns its index and what its (last)
/// connection got.
pub(super) async fn member(
    index: usize,
    client: Client,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<(usize, Seen), BenchError> {
    let result = run(index, client, &shared, stop).await;
    if result.is_err() {
        shared.progress.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn run(
    index: usize,
    mut client: Client,
    shared: &Shared,
    stop: CancellationToken,
) -> Result<(usize, Seen), BenchError> {
    let plan = &shared.plan;
    let group_json = plan.group_json(index);
    let slot = (index % plan.group_size) as u64;
    let sends = plan.sends_of(index);
    let mut seen = Seen::new(plan.seqs());
    // What earlier connections of this member got (after a reconnect).
    let mut before: Option<Seen> = None;
    let mut k = 0;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        let due = plan.due(index, k);
        let step = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            text = client.next_text("receiving") => match text {
                Ok(text) => receive(&client, &text, index, (&mut seen, before.as_ref()), shared),
                Err(error) => Err(error),
            },
            () = sleep_until(due), if k < sends => {
                let text = payload(k * plan.group_size as u64 + slot, micros_since(plan.epoch), plan.payload_bytes);
                k += 1;
                let record =
                    format!("{{\"type\":1,\"target\":\"SendToGroup\",\"arguments\":[{group_json},\"{text}\"]}}{RS}");
                let sent = client.send(record, "sending to the group").await;
                if sent.is_ok() {
                    shared.tally.sent.fetch_add(1, Ordering::Relaxed);
                }
                sent
            }
            _ = ping.tick() => client.ping().await,
        };
        if let Err(error) = step {
            let Some(policy) = &shared.reconnect else {
                return Err(error);
            };
            shared.tally.dropped.fetch_add(1, Ordering::Relaxed);
            if index % policy.setup.urls.len() != policy.killed_url {
                shared.tally.dropped_elsewhere.fetch_add(1, Ordering::Relaxed);
            }
            let earlier = std::mem::replace(&mut seen, Seen::new(plan.seqs()));
            before = Some(match before.take() {
                Some(mut all) => {
                    all.merge(&earlier);
                    all
                }
                None => earlier,
            });
            let closed_at = Instant::now();
            // Let the dead socket go first: a storm must not need two descriptors per member.
            drop(client);
            client = tokio::select! {
                () = stop.cancelled() => return Ok((index, seen)),
                back = come_back(index, &group_json, policy, &shared.tally) => back?,
            };
            policy.back_after.record(index, duration_micros(closed_at.elapsed()));
            shared.tally.rejoined.fetch_add(1, Ordering::Relaxed);
            // What fell due meanwhile is not sent, as the official client's `send` fails while reconnecting.
            while k < sends && plan.due(index, k) < Instant::now() {
                k += 1;
                shared.tally.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    client.close().await;
    Ok((index, seen))
}

/// The messages some member did not get, by message: `(group, sender's slot, k)` and how many members missed it.
/// Meaningful when every member sent everything it was scheduled to.
pub(super) fn missed(plan: &Plan, got: &[(usize, Seen)]) -> BTreeMap<(usize, u64, u64), usize> {
    let mut missed = BTreeMap::new();
    for (index, seen) in got {
        let group = index / plan.group_size;
        for slot in 0..plan.group_size as u64 {
            let sender = group * plan.group_size + slot as usize;
            for k in 0..plan.sends_of(sender) {
                if !seen.contains(k * plan.group_size as u64 + slot) {
                    *missed.entry((group, slot, k)).or_insert(0) += 1;
                }
            }
        }
    }
    missed
}

/// Counts the `msg` deliveries of one transport message.
/// `seen` is what this connection got, `before` what earlier connections of the member got (after a reconnect).
fn receive(
    client: &Client,
    text: &str,
    index: usize,
    (seen, before): (&mut Seen, Option<&Seen>),
    shared: &Shared,
) -> Result<(), BenchError> {
    let now = micros_since(shared.plan.epoch);
    let tally = &shared.tally;
    let survivor = shared.reconnect.as_ref().filter(|_| before.is_none());
    let mut new = 0;
    for part in text.split(RS).filter(|part| !part.is_empty()) {
        let record = client.parse(part)?;
        if let Some(body) = record.msg_payload() {
            tally.received.fetch_add(1, Ordering::Relaxed);
            let Some((seq, sent)) = parse_payload(body) else {
                tally.unexpected.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let latency = now.saturating_sub(sent);
            shared.latency.record(index, latency);
            if let Some(policy) = survivor {
                let during = policy.storm_from.load(Ordering::Relaxed)..=policy.storm_until.load(Ordering::Relaxed);
                if during.contains(&sent) {
                    policy.survivors.record(index, latency);
                }
            }
            match seen.mark(seq) {
                Some(true) if before.is_some_and(|before| before.contains(seq)) => {
                    tally.again_after_reconnect.fetch_add(1, Ordering::Relaxed);
                }
                Some(true) => new += 1,
                Some(false) => {
                    tally.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    tally.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if record.kind == 7 {
            return Err(client.close_record(&record, "receiving"));
        }
    }
    if new > 0 {
        shared.progress.delivered.fetch_add(new, Ordering::Relaxed);
        tally.last.fetch_max(now, Ordering::Relaxed);
    }
    Ok(())
}

/// Reconnects as `withAutomaticReconnect` does, to the other URLs in turn (a member of the first URL tries the
/// second first, half of them the third), then joins the group again, retrying a join that fails.
async fn come_back(index: usize, group_json: &str, policy: &Reconnect, tally: &Tally) -> Result<Client, BenchError> {
    let urls = policy.setup.urls.len();
    let own = index % urls;
    let spread = if urls > 1 { (index / urls) % (urls - 1) } else { 0 };
    let mut last_error = None;
    for (attempt, delay) in RECONNECT_DELAYS.iter().enumerate() {
        sleep(*delay).await;
        let url_index = (own + 1 + spread + attempt) % urls;
        let route = policy.setup.route_to(url_index, index)?;
        let mut client = match Client::connect(route, policy.setup.transport, policy.setup.step_timeout).await {
            Ok(client) => client,
            Err(error) => {
                tally.attempt_failed(index, attempt, &error);
                last_error = Some(error);
                continue;
            }
        };
        let join_until = Instant::now() + policy.setup.step_timeout;
        loop {
            match client.join(group_json).await {
                Ok(()) => return Ok(client),
                Err(BenchError::Protocol { .. }) if Instant::now() < join_until => {
                    tally.rejoin_retries.fetch_add(1, Ordering::Relaxed);
                    sleep(REJOIN_EVERY).await;
                }
                Err(error) => {
                    tally.attempt_failed(index, attempt, &error);
                    last_error = Some(error);
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| BenchError::Task("no reconnect attempt".to_owned())))
}

pub(super) fn duration_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
