//! The join path: hub code on one node joins a connection of that node to a group and leaves it again
//! (`Groups::add`, `Groups::remove`, each returning once the group's owner has the change), for a group that node
//! owns and for one another node owns. The cluster is three nodes in this process (`hubmesh::testing::TestCluster`:
//! the demo hub, in-memory links and gossip), so everything from the hub context through the router, the owner's
//! membership queue and directory, and for the other owner the request over the link, its decoding, the owner's
//! reply and its correlation, is the real code a node runs; only the links carry bytes in memory instead of TCP,
//! so a regression of the routing path shows without a cluster of processes.
//!
//! One iteration is one join and one leave, one after the other, so Criterion's "elem/s" is confirmed membership
//! changes per second with one in flight (latency-bound, on two runtime threads).
//!
//! `cargo bench --bench join`

use std::error::Error;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hubmesh::cluster::{owner, NodeId};
use hubmesh::demo::demo_hub;
use hubmesh::mesh::GroupKey;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::{ConnectionId, HubContext};
use serde_json::json;

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Three nodes, one connection on the first, and the hub context of the first.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    cluster: Option<TestCluster>,
    /// Kept open: a connection that closed is in no group.
    _client: TestClient,
    id: ConnectionId,
    context: HubContext,
}

impl Cluster {
    fn start() -> BenchResult<Cluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (cluster, client, id, context) = runtime.block_on(async {
            let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
            cluster.wait_for_members(Duration::from_secs(10)).await?;
            let url = format!("{}/hub", cluster.url(0).ok_or("node not running")?);
            let mut client = TestClient::to(&url).connect().await?;
            let id = client.invoke_ok_keeping_others("WhoAmI", json!([])).await?;
            let id = ConnectionId::new(id.as_str().ok_or("no id")?);
            let context = cluster.context(0, "demo").ok_or("no hub context")?;
            BenchResult::Ok((cluster, client, id, context))
        })?;
        Ok(Cluster {
            runtime,
            cluster: Some(cluster),
            _client: client,
            id,
            context,
        })
    }

    /// `rounds` joins and leaves of `group`, each confirmed before the next.
    fn join_and_leave(&self, group: &str, rounds: u64) -> Duration {
        self.runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..rounds {
                let joined = self.context.groups().add(&self.id, group).await;
                let left = self.context.groups().remove(&self.id, group).await;
                if let Some(error) = joined.err().or(left.err()) {
                    eprintln!("a membership change failed: {error}");
                }
            }
            start.elapsed()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            self.runtime.block_on(cluster.stop());
        }
    }
}

/// The first demo hub group, `<prefix>-<n>`, that node `node` of the three owns (placement depends on names only).
fn group_owned_by(node: &str, prefix: &str) -> Option<String> {
    let nodes: Vec<NodeId> = (1..=3).map(|n| NodeId::new(format!("node-{n}"), 0)).collect();
    (0..1_000).map(|n| format!("{prefix}-{n}")).find(|group| {
        let key = GroupKey::named("demo", group).placement_bytes();
        owner(&key, &nodes).is_some_and(|id| &*id.name == node)
    })
}

fn join(c: &mut Criterion) {
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("cannot start the in-process cluster: {error}");
            return;
        }
    };
    let mut group = c.benchmark_group("join_and_leave");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(2));
    for (owner_node, name) in [("node-1", "owner_here"), ("node-2", "owner_elsewhere")] {
        let Some(target) = group_owned_by(owner_node, name) else {
            eprintln!("no group owned by {owner_node}");
            continue;
        };
        group.bench_function(BenchmarkId::new("confirmed", name), |b| {
            b.iter_custom(|rounds| cluster.join_and_leave(&target, rounds))
        });
    }
    group.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
