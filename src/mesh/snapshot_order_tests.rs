//! A node's snapshot and its own membership changes reach a peer owner in the order of the node's table: one router
//! with a hub whose table the test changes while a snapshot of it is on its way, and links that record what it
//! sends. The owner applies a node's snapshots and changes in link order, so a snapshot read before a leave that
//! reaches the owner after it brings the member back for good (the chaos harness saw every node count a member
//! that had closed, in the groups of the peer whose notice made a cut-off node close its connections: that peer's
//! snapshot request was answered while the connections were closing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::envelope::{Envelope, Request};
use super::group::GroupKey;
use super::test_router::{owned_by, RecordingLinks};
use super::{LocalHub, MeshError, Router};
use crate::cluster::NodeId;
use crate::connection::{ConnectionHandle, ConnectionId, SharedFrame};

/// The name of the thread whose reads of the table wait for the test (a snapshot that is slow to go out).
const SLOW_READER: &str = "slow snapshot";

/// A hub whose membership table the test holds. A read of it on the [`SLOW_READER`] thread says so and then
/// waits for the test's go: what the router does next with what it read happens after the test's changes.
#[derive(Default)]
struct GatedHub {
    table: Mutex<Vec<(GroupKey, Vec<ConnectionId>)>>,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl LocalHub for GatedHub {
    fn deliver_all(&self, _: &Arc<SharedFrame>, _: &[ConnectionId]) {}
    fn deliver_to(&self, _: &[ConnectionId], _: &Arc<SharedFrame>) {}
    fn deliver_group(&self, _: &GroupKey, _: &Arc<SharedFrame>, _: &[ConnectionId]) -> bool {
        false
    }
    fn has_local_members(&self, key: &GroupKey) -> bool {
        self.table.lock().iter().any(|(group, ids)| group == key && !ids.is_empty())
    }
    fn local_join(&self, key: &GroupKey, id: &ConnectionId) -> Result<(), MeshError> {
        let mut table = self.table.lock();
        match table.iter_mut().find(|(group, _)| group == key) {
            Some((_, ids)) => ids.push(id.clone()),
            None => table.push((key.clone(), vec![id.clone()])),
        }
        Ok(())
    }
    fn local_leave(&self, key: &GroupKey, id: &ConnectionId) -> bool {
        let mut table = self.table.lock();
        let Some((_, ids)) = table.iter_mut().find(|(group, _)| group == key) else {
            return false;
        };
        let before = ids.len();
        ids.retain(|member| member != id);
        ids.len() < before
    }
    fn local_memberships(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        let read = self.table.lock().clone();
        if std::thread::current().name() == Some(SLOW_READER) {
            if let Some((told, go)) = self.gate.lock().take() {
                told.send(()).unwrap();
                go.recv_timeout(Duration::from_secs(10)).unwrap();
            }
        }
        read
    }
    fn handle_of(&self, _: &ConnectionId) -> Option<ConnectionHandle> {
        None
    }
    fn close_all_with(&self, _: &str) {}
}

/// What reached `owner` about `member`, in order: a snapshot that lists it or not, its join, its leave.
fn told_about(links: &RecordingLinks, owner: &NodeId, member: &ConnectionId) -> Vec<&'static str> {
    links
        .sent
        .lock()
        .iter()
        .filter(|(peer, _)| peer == owner)
        .filter_map(|(_, frame)| match rmp_serde::from_slice::<Envelope>(frame) {
            Ok(Envelope::Snapshot { groups, .. }) if groups.iter().any(|(_, ids)| ids.contains(member)) => {
                Some("a snapshot that lists it")
            }
            Ok(Envelope::Snapshot { .. }) => Some("a snapshot without it"),
            Ok(Envelope::Request {
                request: Request::Register { connection, .. },
                ..
            }) if &connection == member => Some("its join"),
            Ok(Envelope::Request {
                request: Request::Unregister { connection, .. },
                ..
            }) if &connection == member => Some("its leave"),
            _ => None,
        })
        .collect()
}

/// Router `here` of a hub holding `table`, in a view with `owner`, with links that record what it sends (cleared
/// of what the view change sent).
fn node(
    here: &NodeId,
    owner: &NodeId,
    table: Vec<(GroupKey, Vec<ConnectionId>)>,
) -> (Arc<Router<GatedHub>>, Arc<RecordingLinks>, Arc<GatedHub>) {
    let router: Arc<Router<GatedHub>> =
        Router::new(&here.name, tokio::runtime::Handle::current(), tracing::Span::none());
    let hub = Arc::new(GatedHub::default());
    *hub.table.lock() = table;
    router.register_hub("hub", &hub);
    let links = Arc::new(RecordingLinks::default());
    router.attach_links(links.clone(), here);
    router.on_view(vec![here.clone(), owner.clone()]);
    links.sent.lock().clear();
    (router, links, hub)
}

/// Sends a snapshot to `owner` on a thread of its own whose read of the table waits for the test: returns once
/// the table was read, with the go and the thread.
fn start_slow_snapshot(
    router: &Arc<Router<GatedHub>>,
    hub: &GatedHub,
    owner: &NodeId,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (told, read) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    *hub.gate.lock() = Some((told, wait));
    let (router, owner) = (router.clone(), owner.clone());
    let thread = std::thread::Builder::new()
        .name(SLOW_READER.to_owned())
        .spawn(move || router.send_snapshot_to(&owner))
        .unwrap();
    read.recv_timeout(Duration::from_secs(5)).unwrap();
    (go, thread)
}

/// Waits until `done` holds, at most `limit`.
async fn within(limit: Duration, mut done: impl FnMut() -> bool) {
    let _ = tokio::time::timeout(limit, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_after_a_snapshot_was_read_reaches_the_owner_after_that_snapshot() {
    let (here, owner) = (NodeId::new("n1", 7), NodeId::new("n2", 7));
    let key = owned_by(&owner, &[&vec![here.clone(), owner.clone()]]);
    let member = ConnectionId::new("c.n1");
    let (router, links, hub) = node(&here, &owner, vec![(key.clone(), vec![member.clone()])]);

    // The snapshot read the table (the member in it); then the connection ends: out of the table, and its owner
    // is told (the reply never comes here, and is not needed).
    let (go, snapshot) = start_slow_snapshot(&router, &hub, &owner);
    assert!(hub.local_leave(&key, &member));
    let leaving = {
        let (router, key, member) = (router.clone(), key.clone(), member.clone());
        tokio::spawn(async move { router.unregister(key, member).await })
    };
    // Give the leave its chance to overtake the snapshot.
    within(Duration::from_secs(1), || told_about(&links, &owner, &member).contains(&"its leave")).await;
    go.send(()).unwrap();
    tokio::task::spawn_blocking(move || snapshot.join().unwrap()).await.unwrap();
    within(Duration::from_secs(5), || told_about(&links, &owner, &member).len() >= 2).await;
    leaving.abort();

    assert_eq!(
        told_about(&links, &owner, &member),
        vec!["a snapshot that lists it", "its leave"],
        "the owner would hold a member that left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_after_a_snapshot_was_read_reaches_the_owner_after_that_snapshot() {
    let (here, owner) = (NodeId::new("n1", 7), NodeId::new("n2", 7));
    let key = owned_by(&owner, &[&vec![here.clone(), owner.clone()]]);
    let member = ConnectionId::new("c.n1");
    let (router, links, hub) = node(&here, &owner, Vec::new());

    let (go, snapshot) = start_slow_snapshot(&router, &hub, &owner);
    let joining = {
        let (router, key, member) = (router.clone(), key.clone(), member.clone());
        tokio::spawn(async move { router.join_local(key, member).await })
    };
    within(Duration::from_secs(1), || told_about(&links, &owner, &member).contains(&"its join")).await;
    go.send(()).unwrap();
    tokio::task::spawn_blocking(move || snapshot.join().unwrap()).await.unwrap();
    within(Duration::from_secs(5), || told_about(&links, &owner, &member).len() >= 2).await;
    joining.abort();

    assert_eq!(
        told_about(&links, &owner, &member),
        vec!["a snapshot without it", "its join"],
        "the owner would lose a member that joined"
    );
}
