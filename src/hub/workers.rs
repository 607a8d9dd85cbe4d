//! This node's group members, kept per HTTP worker, and the queue that carries a group delivery to each worker.
//!
//! A connection task lives on the worker (a single-threaded runtime) that accepted it, while group deliveries come
//! from the group actors and the node links, on the node's multi-threaded runtime. Waking a connection task from
//! another thread costs a remote schedule: a lock on the worker's inject queue and a write to its event fd, once
//! per recipient. So a group delivery goes to each worker that holds members as one [`GroupJob`], and that worker's
//! pump task fills its own connections' mailboxes, where a wake-up is a push onto the local run queue.
//!
//! Each worker's queue is FIFO and every group delivery goes through it, so a group's messages keep their order.
//! The members are read when the job runs, not when it was queued: a connection that joined meanwhile may get a
//! message sent just before its join returned, one that left may miss one sent just before its leave returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::HubRuntime;
use crate::connection::{ConnectionHandle, ConnectionId, SharedFrame};
use crate::group::GroupKey;

/// One worker's queue of group deliveries.
pub(crate) struct Worker {
    id: u64,
    jobs: mpsc::UnboundedSender<GroupJob>,
}

/// A group delivery for the members of one worker.
pub(crate) struct GroupJob {
    runtime: Arc<HubRuntime>,
    worker: u64,
    key: GroupKey,
    frame: Arc<SharedFrame>,
    except: Arc<[ConnectionId]>,
}

impl GroupJob {
    fn run(self) {
        let groups = self.runtime.local_groups.read();
        if let Some(group) = groups.get(&self.key) {
            if let Some(members) = group.of_worker(Some(self.worker)) {
                deliver(members, &self.frame, &self.except);
            }
        }
    }
}

/// The workers a hub's connections run on, by thread, each with its pump task started on first use.
#[derive(Default)]
pub(crate) struct Workers {
    next_id: AtomicU64,
    by_thread: Mutex<Vec<(ThreadId, Arc<Worker>)>>,
}

impl Workers {
    /// The worker of the calling thread (started on its runtime if new); `None` outside a Tokio runtime.
    pub(crate) fn current(&self) -> Option<Arc<Worker>> {
        let thread = std::thread::current().id();
        let mut by_thread = self.by_thread.lock();
        // A worker whose runtime stopped has lost its pump; forget it.
        by_thread.retain(|(_, worker)| !worker.jobs.is_closed());
        if let Some((_, worker)) = by_thread.iter().find(|(id, _)| *id == thread) {
            return Some(worker.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<GroupJob>();
        runtime.spawn(async move {
            while let Some(job) = queue.recv().await {
                job.run();
            }
        });
        let worker = Arc::new(Worker {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            jobs,
        });
        by_thread.push((thread, worker.clone()));
        Some(worker)
    }
}

/// Members by connection id.
type Members = HashMap<ConnectionId, ConnectionHandle>;

/// This node's members of one group, by the worker their connection runs on.
#[derive(Default)]
pub(crate) struct LocalGroup {
    /// `None`: connections that run on no known worker (delivered directly).
    by_worker: Vec<(Option<Arc<Worker>>, Members)>,
}

impl LocalGroup {
    fn of_worker(&self, worker: Option<u64>) -> Option<&Members> {
        self.by_worker
            .iter()
            .find(|(owner, _)| owner.as_ref().map(|owner| owner.id) == worker)
            .map(|(_, members)| members)
    }

    pub(crate) fn insert(&mut self, worker: Option<&Arc<Worker>>, id: ConnectionId, handle: ConnectionHandle) {
        let wanted = worker.map(|worker| worker.id);
        let index = match self
            .by_worker
            .iter()
            .position(|(owner, _)| owner.as_ref().map(|owner| owner.id) == wanted)
        {
            Some(index) => index,
            None => {
                self.by_worker.push((worker.cloned(), HashMap::new()));
                self.by_worker.len() - 1
            }
        };
        if let Some((_, members)) = self.by_worker.get_mut(index) {
            members.insert(id, handle);
        }
    }

    /// Removes a member; returns whether the group is now empty here.
    pub(crate) fn remove(&mut self, id: &ConnectionId) -> bool {
        for (_, members) in &mut self.by_worker {
            members.remove(id);
        }
        self.by_worker.retain(|(_, members)| !members.is_empty());
        self.by_worker.is_empty()
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = &ConnectionId> {
        self.by_worker.iter().flat_map(|(_, members)| members.keys())
    }

    /// Hands the delivery to each worker's queue (or delivers at once to members of no worker, or of one whose
    /// pump is gone).
    pub(crate) fn deliver(
        &self,
        runtime: &Arc<HubRuntime>,
        key: &GroupKey,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
    ) {
        for (worker, members) in &self.by_worker {
            if let Some(worker) = worker {
                let job = GroupJob {
                    runtime: runtime.clone(),
                    worker: worker.id,
                    key: key.clone(),
                    frame: frame.clone(),
                    except: except.clone(),
                };
                if worker.jobs.send(job).is_ok() {
                    continue;
                }
            }
            deliver(members, frame, except);
        }
    }
}

fn deliver(members: &Members, frame: &Arc<SharedFrame>, except: &[ConnectionId]) {
    for (id, handle) in members {
        if !except.contains(id) {
            let _ = handle.deliver(frame.clone());
        }
    }
}
