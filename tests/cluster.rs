//! Several nodes in one process (`TestCluster`: real HTTP and WebSockets for clients, in-memory gossip and links
//! between nodes) using the demo hub: every send is location-transparent, group membership is confirmed
//! cluster-wide, ordering holds, and the cluster survives a node's death.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hubmesh::demo::demo_hub;
use hubmesh::testing::TestCluster;
use hubmesh::{ConnectionId, HubError};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const RS: char = '\u{1e}';

/// A minimal SignalR JSON client over a direct WebSocket (skipNegotiation).
struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: Vec<Value>,
    next_id: u64,
    /// Answers client-result invocations of this target with this value.
    answer: Option<(String, Value)>,
}

impl Client {
    async fn connect(base: &str) -> TestResult<Client> {
        Client::connect_to(&format!("{base}/hub")).await
    }

    async fn connect_to(url: &str) -> TestResult<Client> {
        let url = url.replacen("http://", "ws://", 1);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        socket
            .send(Message::text(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}")))
            .await?;
        let mut client = Client {
            socket,
            pending: Vec::new(),
            next_id: 1,
            answer: None,
        };
        let handshake = client.read_records().await?;
        if handshake.first() != Some(&json!({})) {
            return Err(format!("bad handshake response {handshake:?}").into());
        }
        client.pending.extend(handshake.into_iter().skip(1));
        Ok(client)
    }

    async fn read_records(&mut self) -> TestResult<Vec<Value>> {
        loop {
            // Callers bound the wait; this bound only keeps a broken caller from hanging.
            let message = timeout(Duration::from_secs(60), self.socket.next())
                .await?
                .ok_or("socket closed")??;
            if let Message::Text(text) = message {
                let mut records = Vec::new();
                for record in text.split(RS).filter(|record| !record.is_empty()) {
                    records.push(serde_json::from_str::<Value>(record)?);
                }
                return Ok(records);
            }
        }
    }

    /// The next record that is not a ping, answering client-result invocations on the way.
    async fn next_record(&mut self, limit: Duration) -> TestResult<Option<Value>> {
        let deadline = Instant::now() + limit;
        loop {
            if !self.pending.is_empty() {
                let record = self.pending.remove(0);
                if record["type"] == 6 {
                    continue;
                }
                if record["type"] == 1 && record.get("invocationId").is_some() {
                    if let Some((target, value)) = &self.answer {
                        if record["target"]
                            .as_str()
                            .is_some_and(|name| name.eq_ignore_ascii_case(target))
                        {
                            let reply = json!({"type": 3, "invocationId": record["invocationId"], "result": value});
                            self.socket.send(Message::text(format!("{reply}{RS}"))).await?;
                            continue;
                        }
                    }
                }
                return Ok(Some(record));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match timeout(left, self.read_records()).await {
                Ok(records) => self.pending.extend(records?),
                Err(_) => return Ok(None),
            }
        }
    }

    async fn invoke(&mut self, target: &str, arguments: Value) -> TestResult<Value> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let record = json!({"type": 1, "invocationId": id, "target": target, "arguments": arguments});
        self.socket.send(Message::text(format!("{record}{RS}"))).await?;
        let mut others = Vec::new();
        let result = loop {
            let Some(record) = self.next_record(Duration::from_secs(10)).await? else {
                break Err(format!("no completion for {target}").into());
            };
            if record["type"] == 3 && record["invocationId"] == id.as_str() {
                break match record.get("error") {
                    Some(error) => Err(error.to_string().into()),
                    None => Ok(record.get("result").cloned().unwrap_or(Value::Null)),
                };
            }
            others.push(record);
        };
        self.pending.splice(0..0, others);
        result
    }

    async fn send(&mut self, target: &str, arguments: Value) -> TestResult {
        let record = json!({"type": 1, "target": target, "arguments": arguments});
        self.socket.send(Message::text(format!("{record}{RS}"))).await?;
        Ok(())
    }

    /// The payload of the next `msg` call, if one comes within `limit`.
    async fn next_msg(&mut self, limit: Duration) -> TestResult<Option<Value>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(record) = self.next_record(left).await? else {
                return Ok(None);
            };
            if record["type"] == 1 && record["target"] == "msg" {
                return Ok(Some(record["arguments"][0].clone()));
            }
        }
    }

    async fn connection_id(&mut self) -> TestResult<ConnectionId> {
        let id = self.invoke("WhoAmI", json!([])).await?;
        Ok(ConnectionId::new(id.as_str().ok_or("no id")?))
    }
}

async fn three_nodes() -> TestResult<TestCluster> {
    let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    let took = cluster.wait_for_members(Duration::from_secs(10)).await?;
    println!("3 in-process nodes agreed on the members in {took:?}");
    Ok(cluster)
}

fn url(cluster: &TestCluster, index: usize) -> TestResult<String> {
    Ok(cluster.url(index).ok_or("node not running")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_reaches_clients_on_every_node() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let cluster = three_nodes().await?;
        let mut clients = Vec::new();
        for index in 0..3 {
            clients.push(Client::connect(&url(&cluster, index)?).await?);
        }
        let mut ids = Vec::new();
        for client in &mut clients {
            ids.push(client.connection_id().await?);
        }
        // Ids name their node, so a send to a connection needs no lookup.
        for (index, id) in ids.iter().enumerate() {
            assert!(id.as_str().ends_with(&format!(".node-{}", index + 1)), "{id}");
        }

        // Join from each node; every node then agrees on the count.
        for client in &mut clients {
            client.invoke("JoinGroup", json!(["room"])).await?;
        }
        for client in &mut clients {
            assert_eq!(client.invoke("GroupCount", json!(["room"])).await?, json!(3));
        }

        // A group send from node 2 reaches the members on all three nodes exactly once.
        clients[1].send("SendToGroup", json!(["room", {"n": 1}])).await?;
        for client in &mut clients {
            assert_eq!(client.next_msg(Duration::from_secs(5)).await?, Some(json!({"n": 1})));
            assert_eq!(
                client.next_msg(Duration::from_millis(200)).await?,
                None,
                "delivered twice"
            );
        }

        // Broadcast from node 3.
        clients[2].send("Broadcast", json!(["all"])).await?;
        for client in &mut clients {
            assert_eq!(client.next_msg(Duration::from_secs(5)).await?, Some(json!("all")));
        }

        // Hub contexts of other nodes: client, clients, all_except, group_except, others_in_group-like targets.
        let backend = cluster.context(0, "demo").ok_or("no hub context")?;
        backend.clients().client(&ids[2]).send("msg", ("to three",))?;
        assert_eq!(
            clients[2].next_msg(Duration::from_secs(5)).await?,
            Some(json!("to three"))
        );
        backend
            .clients()
            .clients(vec![ids[1].clone(), ids[2].clone()])
            .send("msg", ("two and three",))?;
        assert_eq!(
            clients[1].next_msg(Duration::from_secs(5)).await?,
            Some(json!("two and three"))
        );
        assert_eq!(
            clients[2].next_msg(Duration::from_secs(5)).await?,
            Some(json!("two and three"))
        );
        backend
            .clients()
            .all_except(vec![ids[0].clone()])
            .send("msg", ("not one",))?;
        assert_eq!(
            clients[1].next_msg(Duration::from_secs(5)).await?,
            Some(json!("not one"))
        );
        assert_eq!(
            clients[2].next_msg(Duration::from_secs(5)).await?,
            Some(json!("not one"))
        );
        assert_eq!(clients[0].next_msg(Duration::from_millis(300)).await?, None);
        backend
            .clients()
            .group_except("room", vec![ids[2].clone()])
            .send("msg", ("not three",))?;
        assert_eq!(
            clients[0].next_msg(Duration::from_secs(5)).await?,
            Some(json!("not three"))
        );
        assert_eq!(
            clients[1].next_msg(Duration::from_secs(5)).await?,
            Some(json!("not three"))
        );
        assert_eq!(clients[2].next_msg(Duration::from_millis(300)).await?, None);
        backend.clients().groups(["room", "empty"]).send("msg", ("groups",))?;
        for client in &mut clients {
            assert_eq!(client.next_msg(Duration::from_secs(5)).await?, Some(json!("groups")));
        }

        // Membership of another node's connection, from a node that does not hold it; an unknown one fails at once.
        let remote = cluster.context(2, "demo").ok_or("no hub context")?;
        remote.groups().add(&ids[0], "solo").await?;
        assert_eq!(remote.groups().count("solo").await?, 1);
        assert_eq!(remote.groups().members("solo").await?, vec![ids[0].clone()]);
        let started = Instant::now();
        let unknown = ConnectionId::new("nobody.node-2");
        let error = remote.groups().add(&unknown, "solo").await.err();
        assert!(matches!(error, Some(HubError::UnknownConnection(_))), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "an unknown connection must fail fast"
        );
        remote.groups().remove(&ids[0], "solo").await?;
        assert_eq!(
            cluster
                .context(1, "demo")
                .ok_or("no ctx")?
                .groups()
                .count("solo")
                .await?,
            0
        );

        // Client results across nodes.
        clients[0].answer = Some(("ask".into(), json!("forty-two")));
        let asking = tokio::spawn({
            let remote = remote.clone();
            let id = ids[0].clone();
            async move { remote.clients().client(&id).invoke::<String, _>("ask", ("q",)).await }
        });
        // The client answers while it waits for messages.
        let _ = clients[0].next_msg(Duration::from_millis(500)).await?;
        assert_eq!(asking.await??, "forty-two");

        // Leaving stops delivery everywhere.
        clients[0].invoke("LeaveGroup", json!(["room"])).await?;
        assert_eq!(clients[2].invoke("GroupCount", json!(["room"])).await?, json!(2));
        clients[2].send("SendToGroup", json!(["room", "after leave"])).await?;
        assert_eq!(
            clients[1].next_msg(Duration::from_secs(5)).await?,
            Some(json!("after leave"))
        );
        assert_eq!(clients[0].next_msg(Duration::from_millis(300)).await?, None);
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_arrive_in_one_order_on_every_node() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let cluster = three_nodes().await?;
        let mut clients = Vec::new();
        for index in 0..3 {
            let mut client = Client::connect(&url(&cluster, index)?).await?;
            client.invoke("JoinGroup", json!(["ordered"])).await?;
            clients.push(client);
        }
        // Two senders on different nodes interleave; every member sees one order, and each sender's own order.
        const EACH: usize = 150;
        let mut senders = [
            Client::connect(&url(&cluster, 0)?).await?,
            Client::connect(&url(&cluster, 2)?).await?,
        ];
        for n in 0..EACH {
            senders[0].send("SendToGroup", json!(["ordered", ["a", n]])).await?;
            senders[1].send("SendToGroup", json!(["ordered", ["b", n]])).await?;
        }
        let mut sequences = Vec::new();
        for client in &mut clients {
            let mut seen = Vec::new();
            while seen.len() < 2 * EACH {
                match client.next_msg(Duration::from_secs(10)).await? {
                    Some(payload) => seen.push(payload),
                    None => return Err(format!("only {} of {} group messages arrived", seen.len(), 2 * EACH).into()),
                }
            }
            for sender in ["a", "b"] {
                let order: Vec<u64> = seen
                    .iter()
                    .filter(|p| p[0] == sender)
                    .filter_map(|p| p[1].as_u64())
                    .collect();
                assert_eq!(
                    order,
                    (0..EACH as u64).collect::<Vec<_>>(),
                    "sender {sender} out of order"
                );
            }
            sequences.push(seen);
        }
        assert!(
            sequences.windows(2).all(|pair| pair[0] == pair[1]),
            "members saw different orders"
        );
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_keep_their_groups_when_a_node_dies() -> TestResult {
    timeout(Duration::from_secs(90), async {
        let mut cluster = three_nodes().await?;
        // Several groups, so some are owned by the node that dies.
        let groups: Vec<String> = (0..12).map(|n| format!("g{n}")).collect();
        let mut clients = Vec::new();
        for index in 0..3 {
            let mut client = Client::connect(&url(&cluster, index)?).await?;
            for group in &groups {
                client.invoke("JoinGroup", json!([group])).await?;
            }
            clients.push(client);
        }
        let mut doomed = clients.remove(1);
        let doomed_id = doomed.connection_id().await?;
        let asker = cluster.context(0, "demo").ok_or("no ctx")?;
        let pending =
            tokio::spawn(async move { asker.clients().client(&doomed_id).invoke::<String, _>("ask", ()).await });
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A survivor keeps sending to every group across the death: none of it may be lost for the survivors.
        const ROUNDS: u64 = 120;
        let mut sender = Client::connect(&url(&cluster, 0)?).await?;
        let sending_groups = groups.clone();
        let sending = tokio::spawn(async move {
            for round in 0..ROUNDS {
                for group in &sending_groups {
                    sender.send("SendToGroup", json!([group, [group, round]])).await?;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            // Keep the sender connected until its sends are through.
            tokio::time::sleep(Duration::from_secs(1)).await;
            TestResult::Ok(())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        let killed_at = Instant::now();
        cluster.kill(1).await;
        // A client result waiting on a connection of the dead node fails, it does not hang.
        let failed = timeout(Duration::from_secs(10), pending).await??;
        let error = failed.err().map(|error| error.to_string()).unwrap_or_default();
        assert!(error.contains("disconnected"), "{error}");
        println!("pending client result failed {:?} after the kill", killed_at.elapsed());
        drop(doomed);

        let detected = cluster.wait_for_members(Duration::from_secs(10)).await?;
        println!("the survivors agreed on the members {detected:?} after the kill");

        // Within 5 s of the death every group counts the two survivors on both surviving nodes.
        let deadline = killed_at + Duration::from_secs(8);
        'settle: loop {
            let mut settled = true;
            let mut counts = Vec::new();
            for client in &mut clients {
                for group in &groups {
                    let count = client.invoke("GroupCount", json!([group])).await?;
                    if count != json!(2) {
                        settled = false;
                    }
                    counts.push(count);
                }
            }
            if settled {
                println!("group membership re-homed {:?} after the kill", killed_at.elapsed());
                break 'settle;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "group counts did not settle at 2 after the node died: {counts:?} (each survivor's client, \
                     then each group)"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every survivor got every send of the window, once each, in each group's order.
        sending.await??;
        for client in &mut clients {
            let mut rounds: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
            let expected = ROUNDS as usize * groups.len();
            let mut count = 0;
            while count < expected {
                let Some(payload) = client.next_msg(Duration::from_secs(10)).await? else {
                    let missing: Vec<_> = rounds
                        .iter()
                        .map(|(g, r)| (g.clone(), ROUNDS as usize - r.len()))
                        .collect();
                    return Err(
                        format!("only {count} of {expected} sends arrived; missing per group {missing:?}").into(),
                    );
                };
                let group = payload[0].as_str().ok_or("bad payload")?.to_owned();
                rounds
                    .entry(group)
                    .or_default()
                    .push(payload[1].as_u64().ok_or("bad payload")?);
                count += 1;
            }
            for (group, seen) in &rounds {
                assert_eq!(
                    seen,
                    &(0..ROUNDS).collect::<Vec<_>>(),
                    "group {group}: lost, repeated or reordered"
                );
            }
            assert_eq!(
                client.next_msg(Duration::from_millis(300)).await?,
                None,
                "a send was delivered twice"
            );
        }
        println!(
            "all {} sends made across the death reached both survivors once, in order",
            ROUNDS as usize * groups.len()
        );

        // Every group send reaches both survivors.
        for group in &groups {
            clients[0].send("SendToGroup", json!([group, group])).await?;
        }
        // Groups have different owners, so only each group's own order is promised: compare as sets.
        for client in &mut clients {
            let mut received = Vec::new();
            for _ in &groups {
                received.push(
                    client
                        .next_msg(Duration::from_secs(5))
                        .await?
                        .ok_or("a group message is missing")?,
                );
            }
            received.sort_by_key(|payload| payload.to_string());
            let mut expected: Vec<Value> = groups.iter().map(|group| json!(group)).collect();
            expected.sort_by_key(|payload| payload.to_string());
            assert_eq!(received, expected);
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_gets_its_memberships_back_when_it_thaws() -> TestResult {
    timeout(Duration::from_secs(90), async {
        let cluster = three_nodes().await?;
        let groups: Vec<String> = (0..6).map(|n| format!("f{n}")).collect();
        let mut clients = Vec::new();
        for index in 0..3 {
            let mut client = Client::connect(&url(&cluster, index)?).await?;
            for group in &groups {
                client.invoke("JoinGroup", json!([group])).await?;
            }
            clients.push(client);
        }
        let frozen_at = Instant::now();
        cluster.freeze(2);
        // The others declare it dead and drop its members.
        let deadline = frozen_at + Duration::from_secs(10);
        loop {
            if clients[0].invoke("GroupCount", json!([groups[0]])).await? == json!(2) {
                println!(
                    "the frozen node's members were dropped {:?} after the freeze",
                    frozen_at.elapsed()
                );
                break;
            }
            if Instant::now() > deadline {
                return Err("the frozen node was never declared dead".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let thawed_at = Instant::now();
        cluster.thaw(2);
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        // Its client did nothing, yet its memberships are back everywhere.
        let deadline = thawed_at + Duration::from_secs(10);
        'restored: loop {
            let mut restored = true;
            for client in clients.iter_mut().take(2) {
                for group in &groups {
                    if client.invoke("GroupCount", json!([group])).await? != json!(3) {
                        restored = false;
                    }
                }
            }
            if restored {
                println!("memberships restored {:?} after the thaw", thawed_at.elapsed());
                break 'restored;
            }
            if Instant::now() > deadline {
                return Err("the thawed node's memberships did not come back".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Drain what the frozen node's client was sent before and during the freeze, then check delivery.
        while clients[2].next_msg(Duration::from_millis(300)).await?.is_some() {}
        clients[0].send("SendToGroup", json!([groups[0], "after thaw"])).await?;
        for client in &mut clients {
            assert_eq!(
                client.next_msg(Duration::from_secs(5)).await?,
                Some(json!("after thaw"))
            );
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_node_that_serves_no_clients_sends_to_all_of_them() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let mut cluster = three_nodes().await?;
        let backend = cluster.add_backend("demo").await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let mut clients = Vec::new();
        for index in 0..3 {
            let mut client = Client::connect(&url(&cluster, index)?).await?;
            client.invoke("JoinGroup", json!(["news"])).await?;
            clients.push(client);
        }
        let context = cluster
            .context(backend, "demo")
            .ok_or("the backend has no demo context")?;
        assert_eq!(context.groups().count("news").await?, 3);
        context.clients().group("news").send("msg", ("from the backend",))?;
        context.clients().all().send("msg", ("to all",))?;
        // A group send goes through the group's owner and a broadcast straight to each node: no order between them.
        for client in &mut clients {
            let mut got = vec![
                client.next_msg(Duration::from_secs(5)).await?.ok_or("missing")?,
                client.next_msg(Duration::from_secs(5)).await?.ok_or("missing")?,
            ];
            got.sort_by_key(|payload| payload.to_string());
            assert_eq!(got, vec![json!("from the backend"), json!("to all")]);
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

/// A hub whose users come from the `user` query parameter (SignalR's `IUserIdProvider`; with JWT it would be a claim).
fn users_hub() -> hubmesh::Hub {
    async fn send_to_user(caller: hubmesh::Caller, user: String, payload: Value) -> Result<(), HubError> {
        caller.clients().user(&user).send("msg", (payload,))
    }
    async fn send_to_users(caller: hubmesh::Caller, users: Vec<String>, payload: Value) -> Result<(), HubError> {
        caller.clients().users(users).send("msg", (payload,))
    }
    async fn send_to_others(caller: hubmesh::Caller, payload: Value) -> Result<(), HubError> {
        caller.clients().others().send("msg", (payload,))
    }
    async fn send_to_others_in_group(caller: hubmesh::Caller, group: String, payload: Value) -> Result<(), HubError> {
        caller.clients().others_in_group(&group).send("msg", (payload,))
    }
    async fn join(caller: hubmesh::Caller, group: String) -> Result<(), HubError> {
        caller.groups().add(caller.connection_id(), &group).await
    }
    hubmesh::Hub::new("users")
        .method("SendToOthers", send_to_others)
        .method("SendToOthersInGroup", send_to_others_in_group)
        .method("JoinGroup", join)
        .user_id_provider(|request| {
            form_urlencoded::parse(request.query.as_bytes())
                .find(|(key, _)| key == "user")
                .map(|(_, value)| value.into_owned())
        })
        .method("SendToUser", send_to_user)
        .method("SendToUsers", send_to_users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_caller_relative_targets_work_on_every_node() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let cluster = TestCluster::start(3, || vec![users_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        // alice has a connection on node 1 and one on node 3; bob one on node 2.
        let mut alice_1 = Client::connect_to(&format!("{}/users?user=alice", url(&cluster, 0)?)).await?;
        let mut bob = Client::connect_to(&format!("{}/users?user=bob", url(&cluster, 1)?)).await?;
        let mut alice_3 = Client::connect_to(&format!("{}/users?user=alice", url(&cluster, 2)?)).await?;
        // The user memberships are registered as the connections open; give the owners a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.send("SendToUser", json!(["alice", "hi alice"])).await?;
        assert_eq!(alice_1.next_msg(Duration::from_secs(5)).await?, Some(json!("hi alice")));
        assert_eq!(alice_3.next_msg(Duration::from_secs(5)).await?, Some(json!("hi alice")));
        assert_eq!(bob.next_msg(Duration::from_millis(300)).await?, None);
        alice_3
            .send("SendToUsers", json!([["alice", "bob"], "everyone"]))
            .await?;
        for client in [&mut alice_1, &mut bob, &mut alice_3] {
            assert_eq!(client.next_msg(Duration::from_secs(5)).await?, Some(json!("everyone")));
        }
        // others and others_in_group, relative to a caller on node 3.
        alice_3.send("SendToOthers", json!(["others"])).await?;
        assert_eq!(alice_1.next_msg(Duration::from_secs(5)).await?, Some(json!("others")));
        assert_eq!(bob.next_msg(Duration::from_secs(5)).await?, Some(json!("others")));
        assert_eq!(alice_3.next_msg(Duration::from_millis(300)).await?, None);
        alice_1.invoke("JoinGroup", json!(["team"])).await?;
        alice_3.invoke("JoinGroup", json!(["team"])).await?;
        alice_3
            .send("SendToOthersInGroup", json!(["team", "team news"]))
            .await?;
        assert_eq!(
            alice_1.next_msg(Duration::from_secs(5)).await?,
            Some(json!("team news"))
        );
        assert_eq!(alice_3.next_msg(Duration::from_millis(300)).await?, None);
        assert_eq!(bob.next_msg(Duration::from_millis(300)).await?, None);

        // From a node's hub context, too.
        let context = cluster.context(1, "users").ok_or("no context")?;
        context.clients().user("bob").send("msg", ("from a context",))?;
        assert_eq!(
            bob.next_msg(Duration::from_secs(5)).await?,
            Some(json!("from a context"))
        );
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}
