//! Any node serves any connection (docs/any-node-design.md): three in-process nodes of the demo hub behind the
//! test harness's round-robin proxy, which sends each request (WebSocket upgrades included) to the next node, as a
//! load balancer without affinity does. A WebSocket or SSE stream negotiated on one node runs on the node that took
//! it; long polls, POSTs and DELETEs spread over all three reach the connection's home; tokens that are forged, of
//! another cluster, or of a dead node get 404.
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::{http_request_with_body as request, negotiate, HttpReply, Protocol};
use hubmesh::testing::proxy::RoundRobinProxy;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::{ConnectionId, Node};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

#[path = "common/stateful_client.rs"]
mod stateful_client;

use stateful_client::StatefulClient;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const RS: char = '\u{1e}';

async fn three_nodes_behind_a_proxy() -> TestResult<(TestCluster, RoundRobinProxy)> {
    let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let proxy = RoundRobinProxy::start(addrs(&cluster)?).await?;
    Ok((cluster, proxy))
}

fn addrs(cluster: &TestCluster) -> TestResult<Vec<SocketAddr>> {
    (0..cluster.len())
        .map(|index| -> TestResult<SocketAddr> {
            let url = cluster.url(index).ok_or("node not running")?;
            Ok(url.trim_start_matches("http://").parse()?)
        })
        .collect()
}

/// Negotiates through `url` (`http://…/hub`): the connection id and token.
async fn negotiated(url: &str) -> TestResult<(ConnectionId, String)> {
    let body = negotiate(url, "", &[]).await?;
    let id = body["connectionId"].as_str().ok_or("no connectionId")?;
    let token = body["connectionToken"].as_str().ok_or("no connectionToken")?;
    Ok((ConnectionId::new(id), token.to_owned()))
}

async fn who_am_i(client: &mut TestClient) -> TestResult<String> {
    Ok(client
        .invoke_ok_keeping_others("WhoAmI", json!([]))
        .await?
        .as_str()
        .ok_or("WhoAmI gave no string")?
        .to_owned())
}

async fn next_msg(client: &mut TestClient, limit: Duration) -> TestResult<Option<Value>> {
    let call = client.next_invocation_of("msg", limit).await?;
    Ok(call.map(|call| call.value["arguments"][0].clone()))
}

/// The node name a connection id ends with.
fn home_of(id: &ConnectionId) -> &str {
    id.as_str().rsplit('.').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_negotiated_on_one_node_runs_on_the_node_that_took_it() -> TestResult {
    timeout(Duration::from_secs(90), async {
        let (cluster, proxy) = three_nodes_behind_a_proxy().await?;
        let hub = format!("{}/hub", proxy.url());
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        let mut next_expected = [[0u64; 3]; 3];
        for _ in 0..3 {
            let (id, token) = negotiated(&hub).await?;
            let mut client = TestClient::to(&format!("{hub}?id={token}")).connect().await?;
            assert_eq!(
                who_am_i(&mut client).await?,
                id.as_str(),
                "the connection lost its negotiated id"
            );
            ids.push(id);
            clients.push(client);
        }
        // Each negotiate and its upgrade went to different nodes: every connection was adopted.
        let routes = proxy.take_routes();
        let upgrades: Vec<SocketAddr> = routes.iter().filter(|r| r.upgrade).map(|r| r.backend).collect();
        let negotiates: Vec<SocketAddr> = routes
            .iter()
            .filter(|r| r.target.contains("/negotiate"))
            .map(|r| r.backend)
            .collect();
        assert_eq!(upgrades.len(), 3);
        for (negotiated_on, upgraded_on) in negotiates.iter().zip(&upgrades) {
            assert_ne!(negotiated_on, upgraded_on, "the proxy did not spread the requests");
        }

        // The homes count the connections that run elsewhere.
        let mut adopted = 0.0;
        for addr in addrs(&cluster)? {
            adopted += metric(addr, "hubmesh_adopted_out_connections").await?;
        }
        assert_eq!(adopted, 3.0, "every connection runs on another node than its home");

        // Groups: joined by the clients themselves, and from another node's context; one send reaches each once.
        for client in &mut clients {
            client.join_group("room").await?;
        }
        clients[1]
            .send_invocation("SendToGroup", json!(["room", "hello"]))
            .await?;
        for client in &mut clients {
            assert_eq!(next_msg(client, Duration::from_secs(5)).await?, Some(json!("hello")));
            assert_eq!(
                next_msg(client, Duration::from_millis(200)).await?,
                None,
                "delivered twice"
            );
        }
        let context = cluster.context(2, "demo").ok_or("no hub context")?;
        context.groups().add(&ids[0], "solo").await?;
        assert_eq!(context.groups().count("solo").await?, 1);
        context.clients().group("solo").send("msg", ("solo",))?;
        assert_eq!(
            next_msg(&mut clients[0], Duration::from_secs(5)).await?,
            Some(json!("solo"))
        );
        context.groups().remove(&ids[0], "solo").await?;
        assert_eq!(context.groups().count("solo").await?, 0);

        // Direct sends from every node reach each connection, once and in order per sender, while the senders
        // learn where the connections run and switch to sending there straight (in bursts, so that the switch
        // happens in the middle of the stream).
        const BURSTS: u64 = 4;
        const PER_BURST: u64 = 50;
        let passed_on = |cluster: &TestCluster| -> u64 {
            (0..3)
                .filter_map(|index| cluster.node(index))
                .map(|node| node.relay_counts().passed_on)
                .sum()
        };
        let mut passed_on_per_burst = Vec::new();
        for burst in 0..BURSTS {
            let before = passed_on(&cluster);
            for sender in 0..3 {
                let context = cluster.context(sender, "demo").ok_or("no hub context")?;
                for (index, id) in ids.iter().enumerate() {
                    for n in burst * PER_BURST..(burst + 1) * PER_BURST {
                        context
                            .clients()
                            .client(id)
                            .send("msg", (json!({"from": sender, "to": index, "n": n}),))?;
                    }
                }
            }
            for (index, client) in clients.iter_mut().enumerate() {
                for _ in 0..3 * PER_BURST {
                    let got = next_msg(client, Duration::from_secs(5))
                        .await?
                        .ok_or("a direct send was lost")?;
                    assert_eq!(got["to"], json!(index));
                    let sender = got["from"].as_u64().ok_or("no sender")? as usize;
                    let n = got["n"].as_u64().ok_or("no n")?;
                    assert_eq!(
                        n, next_expected[index][sender],
                        "out of order from node {sender} to client {index}"
                    );
                    next_expected[index][sender] += 1;
                }
            }
            passed_on_per_burst.push(passed_on(&cluster) - before);
        }
        for client in &mut clients {
            assert_eq!(
                next_msg(client, Duration::from_millis(200)).await?,
                None,
                "a direct send came twice"
            );
        }
        println!("sends passed on by the homes, per burst: {passed_on_per_burst:?}");
        // Once the senders switched, nothing goes through a home any more.
        assert_eq!(passed_on_per_burst.last(), Some(&0), "{passed_on_per_burst:?}");
        let gave_up: u64 = (0..3)
            .filter_map(|index| cluster.node(index))
            .map(|node| node.relay_counts().fences_given_up)
            .sum();
        assert_eq!(gave_up, 0);

        // A client result from a node that neither negotiated nor serves the connection.
        for (index, id) in ids.iter().enumerate() {
            let asker = (0..3)
                .find(|&node| cluster.name(node) != Some(home_of(id)))
                .ok_or("no other node")?;
            let context = cluster.context(asker, "demo").ok_or("no hub context")?;
            clients[index].answer_client_results("ask", json!(index));
            let id = id.clone();
            let asking =
                tokio::spawn(async move { context.clients().client(&id).invoke::<u64, _>("ask", ("q",)).await });
            let _ = next_msg(&mut clients[index], Duration::from_millis(500)).await?;
            assert_eq!(asking.await??, index as u64);
        }

        // A connection that ended is gone on every node: its token gets 404 wherever it lands.
        let (id, token) = negotiated(&hub).await?;
        let client = TestClient::to(&format!("{hub}?id={token}")).connect().await?;
        client.close_socket().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        for index in 0..3 {
            let url = format!("{}/hub?id={token}", cluster.url(index).ok_or("no url")?);
            loop {
                let status = TestClient::to(&url).refused_status().await?;
                if status == 404 {
                    break;
                }
                assert!(Instant::now() < deadline, "{id}: node {index} still answers {status}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        drop(proxy);
        cluster.stop().await;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_dead_tokens_get_404_and_serve_nothing() -> TestResult {
    timeout(Duration::from_secs(90), async {
        let (mut cluster, proxy) = three_nodes_behind_a_proxy().await?;
        let urls: Vec<String> = (0..3)
            .map(|index| cluster.url(index).map(|url| format!("{url}/hub")).ok_or("no url"))
            .collect::<Result<_, _>>()?;
        let node_url = |index: usize| -> TestResult<String> { Ok(urls[index].clone()) };

        // A token of this cluster works on another node.
        let (_, token) = negotiated(&node_url(0)?).await?;
        let mut client = TestClient::to(&format!("{}?id={token}", node_url(1)?))
            .connect()
            .await?;
        assert!(who_am_i(&mut client).await?.ends_with(".node-1"));

        // Forged: every character of a real token changed in turn, and made-up ones.
        let (_, genuine) = negotiated(&node_url(0)?).await?;
        for position in (0..genuine.len()).step_by(7) {
            let mut forged: Vec<char> = genuine.chars().collect();
            forged[position] = if forged[position] == 'A' { 'B' } else { 'A' };
            let forged: String = forged.into_iter().collect();
            for index in 1..3 {
                let status = TestClient::to(&format!("{}?id={forged}", node_url(index)?))
                    .refused_status()
                    .await?;
                assert_eq!(status, 404, "a forged token was taken by node {index}");
            }
        }
        for junk in ["x", "AAAA", "nothing.node-1"] {
            let status = TestClient::to(&format!("{}?id={junk}", node_url(1)?))
                .refused_status()
                .await?;
            assert_eq!(status, 404);
        }

        // Another cluster's token (a node alone, with a node of the same name): refused everywhere.
        let stranger = Node::builder().name("node-1").hub(demo_hub()).start().await?;
        let (_, foreign) = negotiated(&format!("{}/hub", stranger.url())).await?;
        for index in 0..3 {
            let status = TestClient::to(&format!("{}?id={foreign}", node_url(index)?))
                .refused_status()
                .await?;
            assert_eq!(status, 404, "another cluster's token was taken by node {index}");
            let poll = request(
                cluster_addr(&cluster, index)?,
                "GET",
                &format!("/hub?id={foreign}"),
                &[],
                b"",
            )
            .await?;
            assert_eq!(poll.status, 404, "{}", poll.text());
        }
        stranger.stop().await;

        // A token whose home died: 404 once the others see it dead.
        let (_, orphan) = negotiated(&node_url(0)?).await?;
        cluster.kill(0).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = TestClient::to(&format!("{}?id={orphan}", node_url(1)?))
                .refused_status()
                .await;
            if matches!(status, Ok(404)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the token of a dead node still gets {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(client);
        drop(proxy);
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// One sample without labels from the node's `GET /metrics`.
/// Waits until one connection runs in the cluster, on node `index`, and no node has a tunnel open: a node that
/// a stateful connection left holds nothing of it.
async fn runs_only_on(cluster: &TestCluster, index: usize) -> TestResult {
    let expected: Vec<(f64, f64, f64)> = (0..cluster.len())
        .map(|node| (if node == index { 1.0 } else { 0.0 }, 0.0, 0.0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut figures = Vec::new();
        for addr in addrs(cluster)? {
            figures.push((
                metric(addr, "hubmesh_connections{hub=\"demo\"}").await?,
                metric(addr, "hubmesh_tunnels").await?,
                // Nothing left in the set of connections moving away once the move is done.
                metric(addr, "hubmesh_connections_moving_out").await?,
            ));
        }
        if figures == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("(connections, tunnels, moving out) per node: {figures:?}, not {expected:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no node's view of the members has changed for 2.5 s (a node resumes a connection on a tunnel rather
/// than move it while its view changed in the last 2 s).
async fn wait_calm(cluster: &TestCluster) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (f64::NAN, Instant::now());
    loop {
        let mut changes = 0.0;
        for addr in addrs(cluster)? {
            changes += metric(addr, "hubmesh_membership_changes_total").await?;
        }
        if changes != last.0 {
            last = (changes, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(2_500) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the members' views kept changing".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(addr: SocketAddr, name: &str) -> TestResult<f64> {
    let reply = request(addr, "GET", "/metrics", &[], b"").await?;
    let text = reply.text();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .ok_or_else(|| format!("no {name} in /metrics"))?;
    Ok(line.split_whitespace().nth(1).ok_or("no value")?.parse()?)
}

fn cluster_addr(cluster: &TestCluster, index: usize) -> TestResult<SocketAddr> {
    Ok(cluster
        .url(index)
        .ok_or("no url")?
        .trim_start_matches("http://")
        .parse()?)
}

/// A raw long-polling client whose every request goes through the proxy (so to the next node each time).
struct LongPoller {
    proxy: SocketAddr,
    token: String,
    /// Records received and not yet taken.
    inbox: Vec<Value>,
}

impl LongPoller {
    async fn connect(proxy: SocketAddr) -> TestResult<LongPoller> {
        let negotiated = request(proxy, "POST", "/hub/negotiate?negotiateVersion=1", &[], b"").await?;
        assert_eq!(negotiated.status, 200, "{}", negotiated.text());
        let body: Value = serde_json::from_slice(&negotiated.body)?;
        let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
        let poller = LongPoller {
            proxy,
            token,
            inbox: Vec::new(),
        };
        let first = poller.poll().await?;
        assert_eq!(
            (first.status, first.body.len()),
            (200, 0),
            "first poll: {}",
            first.text()
        );
        poller
            .post(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}").as_bytes())
            .await?;
        let handshake = poller.poll().await?;
        assert_eq!(handshake.text(), format!("{{}}{RS}"));
        Ok(poller)
    }

    async fn poll(&self) -> TestResult<HttpReply> {
        Ok(request(self.proxy, "GET", &format!("/hub?id={}", self.token), &[], b"").await?)
    }

    async fn post(&self, body: &[u8]) -> TestResult {
        let reply = request(self.proxy, "POST", &format!("/hub?id={}", self.token), &[], body).await?;
        assert_eq!(reply.status, 200, "POST: {}", reply.text());
        Ok(())
    }

    /// Polls until at least `count` records wait in the inbox (bounded), then takes them.
    async fn take(&mut self, count: usize, limit: Duration) -> TestResult<Vec<Value>> {
        let deadline = Instant::now() + limit;
        while self.inbox.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} records arrived",
                self.inbox.len()
            );
            let reply = self.poll().await?;
            assert_eq!(reply.status, 200, "poll: {}", reply.text());
            for record in reply.text().split(RS).filter(|record| !record.is_empty()) {
                let value: Value = serde_json::from_str(record)?;
                // Pings are not what this test counts.
                if value["type"] != json!(6) {
                    self.inbox.push(value);
                }
            }
        }
        Ok(self.inbox.drain(..count).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_spread_over_three_nodes_carries_a_thousand_messages_each_way_in_order() -> TestResult {
    timeout(Duration::from_secs(120), async {
        let (cluster, proxy) = three_nodes_behind_a_proxy().await?;
        let mut poller = LongPoller::connect(proxy.addr()).await?;
        // Client to server: 1,000 invocations in batches of 10 per POST; each sends its argument back to the caller,
        // then completes.
        const COUNT: usize = 1_000;
        for batch in 0..COUNT / 10 {
            let mut body = String::new();
            for n in batch * 10..batch * 10 + 10 {
                body.push_str(&format!(
                    "{{\"type\":1,\"invocationId\":\"{n}\",\"target\":\"Echo\",\"arguments\":[{n}]}}{RS}"
                ));
            }
            poller.post(body.as_bytes()).await?;
        }
        let records = poller.take(2 * COUNT, Duration::from_secs(60)).await?;
        for (n, pair) in records.chunks(2).enumerate() {
            assert_eq!(pair[0]["target"], json!("msg"), "{}", pair[0]);
            assert_eq!(pair[0]["arguments"][0], json!(n), "echoes out of order");
            assert_eq!(pair[1]["type"], json!(3), "{}", pair[1]);
            assert_eq!(
                pair[1]["invocationId"],
                json!(n.to_string()),
                "completions out of order"
            );
        }
        // Server to client: 1,000 group sends from one node's context, in order.
        poller
            .post(
                format!("{{\"type\":1,\"invocationId\":\"join\",\"target\":\"JoinGroup\",\"arguments\":[\"lp\"]}}{RS}")
                    .as_bytes(),
            )
            .await?;
        let joined = poller.take(1, Duration::from_secs(10)).await?;
        assert_eq!(joined[0]["invocationId"], json!("join"), "{}", joined[0]);
        let context = cluster.context(1, "demo").ok_or("no hub context")?;
        for n in 0..COUNT {
            context.clients().group("lp").send("msg", (n,))?;
        }
        let messages = poller.take(COUNT, Duration::from_secs(60)).await?;
        for (n, message) in messages.iter().enumerate() {
            assert_eq!(message["target"], json!("msg"), "{message}");
            assert_eq!(message["arguments"][0], json!(n), "messages out of order");
        }
        // Nothing came twice: the next records are the answer to one more call.
        poller
            .post(
                format!("{{\"type\":1,\"invocationId\":\"end\",\"target\":\"Echo\",\"arguments\":[\"end\"]}}{RS}")
                    .as_bytes(),
            )
            .await?;
        let after = poller.take(2, Duration::from_secs(10)).await?;
        assert_eq!(
            after[0]["arguments"][0],
            json!("end"),
            "a record came after the last one: {}",
            after[0]
        );
        assert_eq!(after[1]["invocationId"], json!("end"), "{}", after[1]);
        // Poll rules hold across nodes: of two polls at once (the proxy sends them to two nodes), the older one
        // ends with 204 at once, and the other gets the next message.
        let path = format!("/hub?id={}", poller.token);
        let poll = |addr: SocketAddr, path: String| {
            tokio::spawn(async move {
                request(addr, "GET", &path, &[], b"")
                    .await
                    .map_err(|error| error.to_string())
            })
        };
        let (mut first, mut second) = (poll(proxy.addr(), path.clone()), poll(proxy.addr(), path));
        let (ended, pending) = tokio::select! {
            ended = &mut first => (ended, second),
            ended = &mut second => (ended, first),
            () = tokio::time::sleep(Duration::from_secs(10)) => return Err("neither of two polls at once ended".into()),
        };
        let ended = ended??;
        assert_eq!(ended.status, 204, "the older poll: {}", ended.text());
        context.clients().group("lp").send("msg", ("after",))?;
        let answered = timeout(Duration::from_secs(10), pending).await???;
        assert_eq!(answered.status, 200, "{}", answered.text());
        assert!(answered.text().contains("after"), "the newer poll: {}", answered.text());
        // DELETE through yet another node ends it; the token is then gone everywhere.
        let deleted = request(proxy.addr(), "DELETE", &format!("/hub?id={}", poller.token), &[], b"").await?;
        assert_eq!(deleted.status, 202, "{}", deleted.text());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = poller.poll().await?;
            if reply.status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the deleted connection still answers {}",
                reply.status
            );
        }
        drop(proxy);
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// A stateful connection negotiated on node 1 runs on node 2 (which took its WebSocket); its socket drops twice,
/// and the client comes back first to node 3 (neither its home nor its server: the home passes the request on)
/// and then to node 1 (its home). Each time the connection moves to the node the client came back to, and the node
/// it left holds nothing of it (no connection, no tunnel). Group messages sent all along, before, during and after
/// each drop, from node 3, arrive exactly once and in order; what the client sends after each reconnect is
/// processed once, and the message it sends again after each reconnect (its last before the drop) not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_connection_resumes_when_its_client_comes_back_to_another_node() -> TestResult {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        stateful_resume_on_other_nodes(protocol).await?;
    }
    Ok(())
}

async fn stateful_resume_on_other_nodes(protocol: Protocol) -> TestResult {
    timeout(Duration::from_secs(90), async {
        let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let url = |index: usize| -> TestResult<String> { Ok(format!("{}/hub", cluster.url(index).ok_or("no url")?)) };
        let body = negotiate(&url(0)?, "&useStatefulReconnect=true", &[]).await?;
        assert_eq!(body["useStatefulReconnect"], json!(true), "{body}");
        let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
        let at = |index: usize| -> TestResult<String> { Ok(format!("{}?id={token}", url(index)?)) };
        let mut client = StatefulClient::connect_with(&at(1)?, protocol).await?;
        client
            .raw
            .send_invocation_with_id("1", "JoinGroup", json!(["g"]))
            .await?;
        let joined = client.read().await?;
        assert_eq!(joined["invocationId"], json!("1"), "{joined}");
        runs_only_on(&cluster, 1).await?;
        // A connection moves to its client's node only in a calm cluster (`src/node/http/moving.rs`).
        wait_calm(&cluster).await?;

        const COUNT: u64 = 300;
        let context = cluster.context(2, "demo").ok_or("no hub context")?;
        let sender = tokio::spawn(async move {
            for n in 0..COUNT {
                if context.clients().group("g").send("msg", (n,)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        let mut seen = Vec::new();
        let mut completions = Vec::new();
        let mut echoes = Vec::new();
        let mut drops = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < COUNT as usize {
            assert!(
                Instant::now() < deadline,
                "only {} of {COUNT} messages arrived",
                seen.len()
            );
            let message = client.read().await?;
            match message["type"].as_u64() {
                Some(1) => match message["arguments"][0].as_u64() {
                    Some(n) => seen.push(n),
                    // An echo of what the client sent after a reconnect.
                    None => echoes.push(message["arguments"][0].clone()),
                },
                Some(3) => completions.push(message["invocationId"].as_str().unwrap_or_default().to_owned()),
                _ => {}
            }
            // Drop the socket after 100 and after 200 messages, acking part of what arrived first, so that the
            // replay starts in the middle of the buffer.
            if seen.len() == 100 * (drops + 1) && drops < 2 {
                client.raw.send_ack(client.received.saturating_sub(10)).await?;
                tokio::time::sleep(Duration::from_millis(30)).await;
                let next_node = if drops == 0 { 2 } else { 0 };
                // The client's messages so far: the join (1), and one Echo per earlier drop. It sends its last one
                // again, as a client does with a message it had no Ack for: the connection, wherever it runs now,
                // received it already and drops it.
                client.reconnect(&at(next_node)?, 1 + drops as u64).await?;
                match drops {
                    0 => {
                        client
                            .raw
                            .send_invocation_with_id("1", "JoinGroup", json!(["g"]))
                            .await?
                    }
                    _ => {
                        let again = json!([format!("back at node {}", 2)]);
                        client.raw.send_invocation_with_id("echo-0", "Echo", again).await?
                    }
                }
                let id = format!("echo-{drops}");
                client
                    .raw
                    .send_invocation_with_id(&id, "Echo", json!([format!("back at node {next_node}")]))
                    .await?;
                runs_only_on(&cluster, next_node).await?;
                drops += 1;
            }
        }
        let _ = timeout(Duration::from_secs(5), sender).await;
        let expected: Vec<u64> = (0..COUNT).collect();
        assert_eq!(seen, expected, "every group message exactly once, in order");
        // Whatever of the echoes' completions had not come yet arrives now.
        let until = Instant::now() + Duration::from_secs(5);
        while (completions.len() < 2 || echoes.len() < 2) && Instant::now() < until {
            if let Ok(Ok(message)) = timeout(Duration::from_millis(200), client.read()).await {
                match message["type"].as_u64() {
                    Some(3) => completions.push(message["invocationId"].as_str().unwrap_or_default().to_owned()),
                    Some(1) => echoes.push(message["arguments"][0].clone()),
                    _ => {}
                }
            }
        }
        assert_eq!(
            completions,
            ["echo-0", "echo-1"],
            "each invocation after a reconnect ran once"
        );
        assert_eq!(echoes, [json!("back at node 2"), json!("back at node 0")]);
        // Still one member, on one node.
        let context = cluster.context(0, "demo").ok_or("no hub context")?;
        assert_eq!(context.groups().count("g").await?, 1);
        cluster.stop().await;
        Ok(())
    })
    .await?
}
