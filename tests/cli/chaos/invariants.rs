//! The message invariants, checked over the whole record once the run is over:
//! * every message reaches every connection at most once;
//! * each connection gets each sender's messages (per group, for group sends) in the order they were sent;
//! * a message is *required* at a connection when the sender's node and the receiver's node were both untouched by
//!   any fault from 1 s before the send until [`WINDOW`] after it, or after the heal of a cut that was on at the
//!   send if that is later (a node counts as touched from 1 s before a fault that involves it until [`SETTLE`]
//!   after its heal), the sending connection (for group sends) and the receiving one stayed open over that window,
//!   and the receiver was a member before the send (it had finished joining the group, or for user and direct sends
//!   it had connected): a required message that never came is a violation. A cut of other nodes (the group's owner
//!   cut off one way, say) holds sends in the link queues until it heals, by design (docs/semantics.md, "During a
//!   partition": they arrive late, in order), so such a send has until [`WINDOW`] after the heal;
//! * each group has one order: any two connections get the messages required at both in the same order, for
//!   messages sent outside a cut (a partition or a pair cut, from 1 s before it until [`SETTLE`] after its heal):
//!   a cut can make the nodes' views disagree, and then a group has two owners that each order the sends they get
//!   (docs/semantics.md, "During a partition"); each sender's order holds there too (checked above).
//!
//! Faults on other nodes (a group's owner killed, frozen or cut off, a node restarted, a node with another secret)
//! do not make anything less required: the design promises survivors lose nothing across them.
//!
//! A stateful-reconnect connection (`clients::run_stateful_client`) loses nothing across a single node's death
//! either, its own node's included (docs/semantics.md, "A node's death and its stateful connections"): for it, a
//! kill or a rolling restart does not make its node touched. Until it first resumes it runs on its own node; after
//! that on its keeper, which the harness does not know, so a message is then required at it only if no node at all
//! was touched by any other fault over the window. A connection that could not resume ends (a Close, or no way
//! back within `clients::RESUME_FOR`), and so is not required to get what came after.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::clients::{Connection, Message, Record};
use super::harness::{Applied, Violation};

/// How long after its send a message may take to arrive (a re-homed group's held and re-sent messages included).
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long after a fault's heal its nodes still count as touched (a thawed node closes its connections within
/// 10 s of being told it was declared dead).
pub const SETTLE: Duration = Duration::from_secs(10);
const BEFORE: Duration = Duration::from_secs(1);

/// What the message checks found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub sent: HashMap<char, usize>,
    pub accepted: usize,
    pub receipts: usize,
    /// (message, connection) pairs required, and of those the ones that arrived.
    pub required: usize,
    pub delivered: usize,
    pub violations: Vec<Violation>,
}

/// When each node was touched by a fault.
pub fn touched(applied: &[Applied], nodes: usize) -> Vec<Vec<(Duration, Duration)>> {
    let mut spans = vec![Vec::new(); nodes];
    for fault in applied {
        for &node in &fault.nodes {
            spans[node].push((fault.start.saturating_sub(BEFORE), fault.healed + SETTLE));
        }
    }
    spans
}

/// When each node was touched by a fault other than a death (a kill, or a rolling restart's stop and start), which
/// a stateful connection is promised to survive.
fn touched_but_by_deaths(applied: &[Applied], nodes: usize) -> Vec<Vec<(Duration, Duration)>> {
    let others: Vec<Applied> = applied
        .iter()
        .filter(|fault| !fault.fault.starts_with("Kill") && !fault.fault.starts_with("RollingRestart"))
        .cloned()
        .collect();
    touched(&others, nodes)
}

/// Whether connection `connection` was on an untouched node from `from` to `until`; a stateful one's own node
/// counts only faults other than deaths, and once it resumed elsewhere (its keeper) every node does.
fn receiver_untouched(
    connection: &Connection,
    spans: &[Vec<(Duration, Duration)>],
    but_by_deaths: &[Vec<(Duration, Duration)>],
    from: Duration,
    until: Duration,
) -> bool {
    if !connection.stateful {
        return untouched(&spans[connection.node], from, until);
    }
    let moved = connection.resumes.first().is_some_and(|&(at, _)| at <= until);
    if moved {
        but_by_deaths.iter().all(|node| untouched(node, from, until))
    } else {
        untouched(&but_by_deaths[connection.node], from, until)
    }
}

/// Whether a fault cuts nodes apart (a partition or a pair cut): views can then disagree.
fn splits_views(fault: &Applied) -> bool {
    fault.fault.starts_with("Partition") || fault.fault.starts_with("PairCut")
}

/// The cuts (partitions, pair cuts, cuts of the links alone), which hold sends in the link queues: from their
/// start to their heal.
fn cuts(applied: &[Applied]) -> Vec<(Duration, Duration)> {
    applied
        .iter()
        .filter(|fault| splits_views(fault) || fault.fault.starts_with("LinksOnly"))
        .map(|fault| (fault.start, fault.healed))
        .collect()
}

/// Until when a send made from `at` to `done` may take to arrive: [`WINDOW`] after it, or after the heal of a cut
/// that was on while it was made, whichever is later.
fn deadline(cuts: &[(Duration, Duration)], at: Duration, done: Duration) -> Duration {
    cuts.iter()
        .filter(|&&(start, healed)| start <= done && healed >= at)
        .map(|&(_, healed)| healed + WINDOW)
        .fold(done + WINDOW, Duration::max)
}

fn untouched(spans: &[(Duration, Duration)], from: Duration, to: Duration) -> bool {
    spans.iter().all(|&(start, end)| end < from || start > to)
}

fn stays_open(connection: &Connection, until: Duration) -> bool {
    connection.closed.is_none_or(|closed| closed >= until)
}

fn secs(at: Duration) -> String {
    format!("{:.3} s", at.as_secs_f64())
}

pub fn check(record: &Record, applied: &[Applied], nodes: usize) -> Verdict {
    let spans = touched(applied, nodes);
    let but_by_deaths = touched_but_by_deaths(applied, nodes);
    let cut_spans = cuts(applied);
    let mut verdict = Verdict {
        receipts: record.received.len(),
        ..Verdict::default()
    };
    let mut violations = Vec::new();

    for (label, text) in &record.garbled {
        violations.push(Violation {
            at: Duration::ZERO,
            what: format!("{label} got a message that is not the harness's: {text:?}"),
        });
    }

    // At most once, and in order per sender (per group for group sends), at every connection.
    let mut copies: HashMap<(&str, &Message), Vec<Duration>> = HashMap::new();
    let mut last: HashMap<(&str, char, &str, &str), u64> = HashMap::new();
    let mut order: HashMap<&str, Vec<(&Message, Duration)>> = HashMap::new();
    for (label, message, at) in &record.received {
        copies.entry((label.as_str(), message)).or_default().push(*at);
        let group = if message.kind == 'g' {
            message.target.as_str()
        } else {
            ""
        };
        let stream = (label.as_str(), message.kind, message.sender.as_str(), group);
        if let Some(previous) = last.get(&stream) {
            if message.sequence < *previous {
                violations.push(Violation {
                    at: *at,
                    what: format!(
                        "out of order: {label} got {message:?} after sequence {previous} of the same sender{}",
                        if group.is_empty() {
                            String::new()
                        } else {
                            format!(" in {group}")
                        }
                    ),
                });
            }
        }
        last.insert(stream, message.sequence.max(last.get(&stream).copied().unwrap_or(0)));
        if message.kind == 'g' {
            order.entry(label.as_str()).or_default().push((message, *at));
        }
    }
    for ((label, message), times) in &copies {
        if times.len() > 1 {
            violations.push(Violation {
                at: times[1],
                what: format!(
                    "duplicate: {label} got {message:?} {} times, at {:?}",
                    times.len(),
                    times.iter().map(|t| secs(*t)).collect::<Vec<_>>()
                ),
            });
        }
    }

    // Required messages.
    let by_label: HashMap<&str, &Connection> = record
        .connections
        .iter()
        .map(|connection| (connection.label.as_str(), connection))
        .collect();
    let mut required_at: HashMap<&str, HashSet<&Message>> = HashMap::new();
    for sent in &record.sent {
        *verdict.sent.entry(sent.message.kind).or_default() += 1;
        if !sent.accepted {
            continue;
        }
        verdict.accepted += 1;
        let (from, until) = (sent.at.saturating_sub(BEFORE), deadline(&cut_spans, sent.at, sent.done));
        if sent.node >= nodes || !untouched(&spans[sent.node], from, until) {
            continue;
        }
        let message = &sent.message;
        if message.kind == 'g'
            && !by_label
                .get(message.sender.as_str())
                .is_some_and(|sender| stays_open(sender, until))
        {
            continue;
        }
        let receivers = record.connections.iter().filter(|connection| {
            let member = match message.kind {
                'g' => {
                    connection.groups.contains(&message.target)
                        && connection.joined.is_some_and(|joined| joined <= sent.at)
                }
                'u' => connection.user == message.target && connection.opened <= sent.at,
                _ => connection.id == message.target && connection.opened <= sent.at,
            };
            member
                && stays_open(connection, until)
                && receiver_untouched(connection, &spans, &but_by_deaths, from, until)
        });
        let mut missed = Vec::new();
        for receiver in receivers {
            verdict.required += 1;
            if copies.contains_key(&(receiver.label.as_str(), message)) {
                verdict.delivered += 1;
                required_at.entry(receiver.label.as_str()).or_default().insert(message);
            } else {
                missed.push(format!("{} (node-{})", receiver.label, receiver.node + 1));
            }
        }
        if !missed.is_empty() {
            let got: Vec<String> = record
                .connections
                .iter()
                .filter(|connection| copies.contains_key(&(connection.label.as_str(), message)))
                .map(|connection| format!("{} (node-{})", connection.label, connection.node + 1))
                .collect();
            violations.push(Violation {
                at: sent.at,
                what: format!(
                    "missing: {message:?} sent at {} via node-{} never reached {} required receivers{}: {}; got it: {}",
                    secs(sent.at),
                    sent.node + 1,
                    missed.len(),
                    if message.kind == 'g' {
                        format!(" (members of {})", message.target)
                    } else {
                        String::new()
                    },
                    missed.join(", "),
                    if got.is_empty() {
                        "nobody".to_owned()
                    } else {
                        got.join(", ")
                    }
                ),
            });
        }
    }

    // One order per group, among the messages required at (and received by) both of two connections and sent
    // outside a cut.
    let cuts: Vec<(Duration, Duration)> = applied
        .iter()
        .filter(|fault| splits_views(fault))
        .map(|fault| (fault.start.saturating_sub(BEFORE), fault.healed + SETTLE))
        .collect();
    let sent_at: HashMap<&Message, Duration> = record.sent.iter().map(|sent| (&sent.message, sent.at)).collect();
    let outside_cuts = |message: &Message| {
        sent_at
            .get(message)
            .is_some_and(|at| cuts.iter().all(|&(start, end)| *at < start || *at > end))
    };
    let mut groups: HashMap<&str, Vec<&str>> = HashMap::new();
    for connection in &record.connections {
        for group in &connection.groups {
            groups
                .entry(group.as_str())
                .or_default()
                .push(connection.label.as_str());
        }
    }
    let empty = HashSet::new();
    for (group, members) in groups {
        let lists: Vec<(&str, Vec<(&Message, Duration)>)> = members
            .iter()
            .map(|label| {
                let required = required_at.get(label).unwrap_or(&empty);
                let list = order
                    .get(label)
                    .map(|all| {
                        all.iter()
                            .filter(|(message, _)| {
                                message.target == group && required.contains(message) && outside_cuts(message)
                            })
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default();
                (*label, list)
            })
            .collect();
        for (i, (first, first_list)) in lists.iter().enumerate() {
            for (second, second_list) in &lists[i + 1..] {
                let in_first: HashSet<&Message> = first_list.iter().map(|(message, _)| *message).collect();
                let in_second: HashSet<&Message> = second_list.iter().map(|(message, _)| *message).collect();
                let a: Vec<_> = first_list
                    .iter()
                    .filter(|(message, _)| in_second.contains(message))
                    .collect();
                let b: Vec<_> = second_list
                    .iter()
                    .filter(|(message, _)| in_first.contains(message))
                    .collect();
                if let Some(position) = a.iter().zip(&b).position(|(x, y)| x.0 != y.0) {
                    violations.push(Violation {
                        at: a[position].1,
                        what: format!(
                            "two orders in {group}: {first} got {:?} where {second} got {:?} (position {position} of {} messages both got)",
                            a[position].0, b[position].0, a.len()
                        ),
                    });
                }
            }
        }
    }
    violations.sort_by_key(|violation| violation.at);
    verdict.violations = violations;
    verdict
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn a_send_outside_any_cut_has_the_window_after_it() {
        let cuts = [(s(100), s(113))];
        assert_eq!(deadline(&cuts, s(50), s(50)), s(60));
        assert_eq!(deadline(&cuts, s(120), s(121)), s(131));
    }

    #[test]
    fn a_send_during_a_cut_has_the_window_after_the_heal() {
        let cuts = [(s(100), s(113)), (s(200), s(205))];
        assert_eq!(deadline(&cuts, s(101), s(101)), s(123));
        // Made just before the cut began and done after: it was caught by it too.
        assert_eq!(deadline(&cuts, s(99), s(100)), s(123));
        // A short cut that heals within the window changes nothing.
        assert_eq!(deadline(&cuts, s(201), s(201)), s(215));
    }
}

#[cfg(test)]
mod stateful_tests {
    use super::*;

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn connection(node: usize, stateful: bool, resumes: Vec<(Duration, usize)>) -> Connection {
        Connection {
            label: "n0s0.1".to_owned(),
            node,
            user: "u-n0s0".to_owned(),
            id: "id".to_owned(),
            groups: Vec::new(),
            opened: s(0),
            joined: Some(s(1)),
            closed: None,
            close_reason: None,
            stateful,
            resumes,
            resuming: false,
        }
    }

    fn applied(fault: &str, nodes: Vec<usize>, start: u64, healed: u64) -> Applied {
        Applied {
            fault: fault.to_owned(),
            nodes,
            start: s(start),
            healed: s(healed),
            converged_after: None,
        }
    }

    #[test]
    fn a_stateful_connection_is_required_across_its_own_nodes_death_only() {
        let faults = [
            applied("Kill { node: 0, down: 3s }", vec![0], 100, 103),
            applied("Freeze { node: 2, lasting: 3s }", vec![2], 200, 203),
        ];
        let (spans, deaths) = (touched(&faults, 3), touched_but_by_deaths(&faults, 3));
        let plain = connection(0, false, Vec::new());
        let stateful = connection(0, true, vec![(s(102), 1)]);
        let stayed = connection(0, true, Vec::new());
        // Across the kill of its node: the stateful connection only.
        assert!(!receiver_untouched(&plain, &spans, &deaths, s(99), s(110)));
        assert!(receiver_untouched(&stateful, &spans, &deaths, s(99), s(110)));
        // Once it resumed elsewhere, a freeze of any node makes it touched; before, only of its own.
        assert!(!receiver_untouched(&stateful, &spans, &deaths, s(199), s(210)));
        assert!(receiver_untouched(&stayed, &spans, &deaths, s(199), s(210)));
        assert!(receiver_untouched(&stateful, &spans, &deaths, s(300), s(310)));
    }
}
