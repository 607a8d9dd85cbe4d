//! The Azure SignalR-style REST API (`/api/hubs/...`, version 2022-06-01 paths) against a three-node in-process
//! cluster: every call is sent to a node where none of the addressed connections lives, with tokens signed as
//! Azure's documentation says (HS256 with the access key, `aud` = the request URL without its query, `exp`); and
//! the refusals: unknown hub, bad token, wrong audience, expired token, oversized and malformed bodies, a node
//! without an access key. `tests/python_client.rs` sends the same calls from Python's standard library.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::testing::client::{http_request_with_body, HttpReply};
use hubmesh::testing::cluster::TEST_REST_ACCESS_KEY;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::{Caller, Hub, HubError, Node};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

#[path = "common/query_user.rs"]
mod query_user;

use query_user::user_from_query;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a message may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(5);
/// How long a test waits for what must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// A hub whose users come from the `user` query parameter, with `WhoAmI` (the connection id).
fn chat_hub() -> Hub {
    async fn who_am_i(caller: Caller) -> Result<String, HubError> {
        Ok(caller.connection_id().to_string())
    }
    Hub::new("chat")
        .method("WhoAmI", who_am_i)
        .user_id_provider(user_from_query)
}

fn addr_of(base: &str) -> TestResult<SocketAddr> {
    Ok(base.strip_prefix("http://").ok_or("not an http URL")?.parse()?)
}

/// A token as Azure's documentation has it: HS256 with `key`, `aud` the request URL, `exp` in `lifetime_s` seconds.
fn token(key: &str, audience: &str, lifetime_s: i64) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
    let claims = json!({ "aud": audience, "exp": now + lifetime_s });
    encode(&Header::default(), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

/// One REST call to the node at `base`: `target` is the path and query; the token's audience is `base` + path.
async fn call(base: &str, method: &str, target: &str, body: Option<Value>) -> TestResult<HttpReply> {
    let path = target.split('?').next().unwrap_or_default();
    let bearer = token(TEST_REST_ACCESS_KEY, &format!("{base}{path}"), 3600);
    call_with(
        base,
        method,
        target,
        &bearer,
        body.map(|body| body.to_string().into_bytes()),
    )
    .await
}

async fn call_with(
    base: &str,
    method: &str,
    target: &str,
    token: &str,
    body: Option<Vec<u8>>,
) -> TestResult<HttpReply> {
    let authorization = format!("Bearer {token}");
    let mut headers = vec![("Authorization", authorization.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    Ok(http_request_with_body(addr_of(base)?, method, target, &headers, &body.unwrap_or_default()).await?)
}

fn message(payload: &str) -> Value {
    json!({ "target": "msg", "arguments": [payload, 1] })
}

/// A client of the chat hub on `base` as `user`, with its connection id.
async fn member(base: &str, user: &str) -> TestResult<(TestClient, String)> {
    let mut client = TestClient::to(&format!("{base}/chat?user={user}")).connect().await?;
    let id = client.invoke_ok_keeping_others("WhoAmI", json!([])).await?;
    Ok((client, id.as_str().ok_or("no id")?.to_owned()))
}

/// The first argument of the client's next `msg`, if one comes within `within`.
async fn next_msg(client: &mut TestClient, within: Duration) -> TestResult<Option<String>> {
    let record = client.next_invocation_of("msg", within).await?;
    Ok(record.and_then(|record| record.value["arguments"][0].as_str().map(str::to_owned)))
}

async fn expect_msg(client: &mut TestClient, payload: &str) -> TestResult {
    let got = next_msg(client, ARRIVAL).await?;
    assert_eq!(got.as_deref(), Some(payload), "expected {payload}");
    Ok(())
}

async fn expect_no_msg(client: &mut TestClient) -> TestResult {
    let got = next_msg(client, QUIET).await?;
    assert_eq!(got, None, "a message that should not have arrived");
    Ok(())
}

fn assert_status(reply: &HttpReply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {} {}", reply.status, reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_reaches_members_on_other_nodes() -> TestResult {
    timeout(Duration::from_secs(120), async {
        let cluster = TestCluster::start(3, || vec![chat_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let bases: Vec<String> = (0..3).map(|index| cluster.url(index).unwrap()).collect();
        // alice on node 1, bob on node 2; every call goes to node 3.
        let (mut alice, alice_id) = member(&bases[0], "alice").await?;
        let (mut bob, bob_id) = member(&bases[1], "bob").await?;
        let api = &bases[2];

        let health = http_request_with_body(addr_of(api)?, "HEAD", "/api/health", &[], b"").await?;
        assert_status(&health, 200, "health (no token needed)");

        let sent = call(
            api,
            "POST",
            "/api/hubs/chat/:send?api-version=2022-06-01",
            Some(message("all")),
        )
        .await?;
        assert_status(&sent, 202, "broadcast");
        expect_msg(&mut alice, "all").await?;
        expect_msg(&mut bob, "all").await?;

        let target = format!("/api/hubs/chat/:send?excluded={alice_id}");
        assert_status(
            &call(api, "POST", &target, Some(message("not alice"))).await?,
            202,
            "excluded",
        );
        expect_msg(&mut bob, "not alice").await?;
        let target = "/api/hubs/chat/:send?excludedUsers=bob";
        assert_status(
            &call(api, "POST", target, Some(message("not bob"))).await?,
            202,
            "excludedUsers",
        );
        expect_msg(&mut alice, "not bob").await?;
        // Had alice got "not alice" (or bob "not bob"), it would come before this one.
        assert_status(
            &call(api, "POST", "/api/hubs/chat/:send", Some(message("marker 1"))).await?,
            202,
            "marker",
        );
        expect_msg(&mut alice, "marker 1").await?;
        expect_msg(&mut bob, "marker 1").await?;

        let target = "/api/hubs/chat/users/bob/:send";
        assert_status(
            &call(api, "POST", target, Some(message("to bob"))).await?,
            202,
            "user send",
        );
        expect_msg(&mut bob, "to bob").await?;
        let target = format!("/api/hubs/chat/connections/{alice_id}/:send");
        assert_status(
            &call(api, "POST", &target, Some(message("to alice"))).await?,
            202,
            "connection send",
        );
        expect_msg(&mut alice, "to alice").await?;
        expect_no_msg(&mut alice).await?;
        expect_no_msg(&mut bob).await?;

        // A connection joins and leaves a group.
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/groups/room", None).await?,
            404,
            "empty group",
        );
        let target = format!("/api/hubs/chat/groups/room/connections/{alice_id}");
        assert_status(&call(api, "PUT", &target, None).await?, 200, "add to group");
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/groups/room", None).await?,
            200,
            "group with a member",
        );
        let group_send = "/api/hubs/chat/groups/room/:send";
        assert_status(
            &call(api, "POST", group_send, Some(message("room"))).await?,
            202,
            "group send",
        );
        expect_msg(&mut alice, "room").await?;
        expect_no_msg(&mut bob).await?;
        let except_alice = format!("{group_send}?excluded={alice_id}");
        assert_status(
            &call(api, "POST", &except_alice, Some(message("room but alice"))).await?,
            202,
            "group except",
        );
        assert_status(&call(api, "DELETE", &target, None).await?, 200, "remove from group");
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/groups/room", None).await?,
            404,
            "emptied group",
        );
        assert_status(
            &call(api, "POST", group_send, Some(message("room again"))).await?,
            202,
            "group send",
        );
        assert_status(
            &call(api, "POST", "/api/hubs/chat/:send", Some(message("marker 2"))).await?,
            202,
            "marker",
        );
        expect_msg(&mut alice, "marker 2").await?;
        expect_msg(&mut bob, "marker 2").await?;

        // A user joins and leaves a group: all of its connections, wherever they are.
        let (mut bob_again, _) = member(&bases[0], "bob").await?;
        let user_group = "/api/hubs/chat/users/bob/groups/team";
        assert_status(
            &call(api, "HEAD", user_group, None).await?,
            404,
            "user not in group yet",
        );
        assert_status(&call(api, "PUT", user_group, None).await?, 200, "add user to group");
        assert_status(&call(api, "HEAD", user_group, None).await?, 200, "user in group");
        let team_send = "/api/hubs/chat/groups/team/:send";
        assert_status(
            &call(api, "POST", team_send, Some(message("team"))).await?,
            202,
            "team send",
        );
        expect_msg(&mut bob, "team").await?;
        expect_msg(&mut bob_again, "team").await?;
        expect_no_msg(&mut alice).await?;
        assert_status(
            &call(api, "DELETE", user_group, None).await?,
            200,
            "remove user from group",
        );
        assert_status(&call(api, "HEAD", user_group, None).await?, 404, "user left the group");
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/groups/team", None).await?,
            404,
            "team is empty",
        );

        // Existence checks.
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/users/alice", None).await?,
            200,
            "user alice",
        );
        assert_status(
            &call(api, "HEAD", "/api/hubs/chat/users/nobody", None).await?,
            404,
            "user nobody",
        );
        let target = format!("/api/hubs/chat/connections/{bob_id}");
        assert_status(&call(api, "HEAD", &target, None).await?, 200, "bob's connection");
        for unknown in ["nope.node-1", "nope.node-3", "nope.no-such-node", "nope"] {
            let probe = format!("/api/hubs/chat/connections/{unknown}");
            assert_status(&call(api, "HEAD", &probe, None).await?, 404, unknown);
            let join = format!("/api/hubs/chat/groups/room/connections/{unknown}");
            assert_status(&call(api, "PUT", &join, None).await?, 404, unknown);
        }

        // Closing a connection: it gets a Close message with the reason; once it has gone, it no longer exists.
        let close = format!("/api/hubs/chat/connections/{bob_id}?reason=see%20you");
        assert_status(&call(api, "DELETE", &close, None).await?, 200, "close");
        let record = bob.record().await?;
        assert_eq!(record.kind(), 7, "a Close message: {}", record.value);
        assert_eq!(record.value["error"], "see you");
        assert_ne!(
            record.value["allowReconnect"],
            json!(true),
            "no reconnect: {}",
            record.value
        );
        bob.close_socket().await;
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let status = call(api, "HEAD", &target, None).await?.status;
            if status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "bob's connection still exists ({status})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        alice.assert_frame_kinds()?;
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

/// Expects the client's next record (Pings aside) to be a Close message with `reason` and no reconnect.
async fn expect_close(client: &mut TestClient, reason: &str) -> TestResult {
    let record = client.record().await?;
    assert_eq!(record.kind(), 7, "a Close message: {}", record.value);
    assert_eq!(record.value["error"], reason, "{}", record.value);
    assert_ne!(
        record.value["allowReconnect"],
        json!(true),
        "no reconnect: {}",
        record.value
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connections_of_a_group_a_user_and_the_hub() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let cluster = TestCluster::start(3, || vec![chat_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let (base_1, base_2, api) = (
            cluster.url(0).unwrap(),
            cluster.url(1).unwrap(),
            cluster.url(2).unwrap(),
        );
        let (mut alice, alice_id) = member(&base_1, "alice").await?;
        let (mut carol, carol_id) = member(&base_1, "carol").await?;
        let (mut bob, _) = member(&base_2, "bob").await?;
        let (mut dave, _) = member(&base_2, "dave").await?;
        for id in [&alice_id, &carol_id] {
            let join = format!("/api/hubs/chat/groups/g/connections/{id}");
            assert_status(&call(&api, "PUT", &join, None).await?, 200, "join");
        }
        let close_group = format!("/api/hubs/chat/groups/g/:closeConnections?excluded={carol_id}&reason=group");
        assert_status(&call(&api, "POST", &close_group, None).await?, 204, "close a group");
        expect_close(&mut alice, "group").await?;
        let close_user = "/api/hubs/chat/users/bob/:closeConnections?reason=user";
        assert_status(&call(&api, "POST", close_user, None).await?, 204, "close a user");
        expect_close(&mut bob, "user").await?;
        let close_all = format!("/api/hubs/chat/:closeConnections?excluded={carol_id}&reason=all");
        assert_status(&call(&api, "POST", &close_all, None).await?, 204, "close the hub");
        expect_close(&mut dave, "all").await?;
        // carol was excluded each time: her next record is this message, not a Close.
        let to_carol = format!("/api/hubs/chat/connections/{carol_id}/:send");
        assert_status(
            &call(&api, "POST", &to_carol, Some(message("still here"))).await?,
            202,
            "send",
        );
        let record = carol.record().await?;
        assert_eq!(record.value["arguments"][0], "still here", "{}", record.value);
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_with_azures_status_codes() -> TestResult {
    timeout(Duration::from_secs(60), async {
        let cluster = TestCluster::start(3, || vec![chat_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let (mut alice, _) = member(&cluster.url(0).unwrap(), "alice").await?;
        let api = cluster.url(1).unwrap();
        let path = "/api/hubs/chat/:send";
        let body = || Some(message("refused").to_string().into_bytes());
        let audience = format!("{api}{path}");

        let unknown_hub = call(&api, "POST", "/api/hubs/nohub/:send", Some(message("x"))).await?;
        assert_status(&unknown_hub, 404, "unknown hub");
        let wrong_key = token("not the access key", &audience, 3600);
        assert_status(
            &call_with(&api, "POST", path, &wrong_key, body()).await?,
            401,
            "bad key",
        );
        assert_status(
            &call_with(&api, "POST", path, "garbage", body()).await?,
            401,
            "not a JWT",
        );
        let no_token = http_request_with_body(addr_of(&api)?, "POST", path, &[], &body().unwrap()).await?;
        assert_status(&no_token, 401, "no token");
        let other_url = token(TEST_REST_ACCESS_KEY, &format!("{api}/api/hubs/other/:send"), 3600);
        let reply = call_with(&api, "POST", path, &other_url, body()).await?;
        assert_status(&reply, 401, "wrong audience");
        assert!(reply.text().contains("audience"), "{}", reply.text());
        let other_host = token(TEST_REST_ACCESS_KEY, &format!("http://example.com{path}"), 3600);
        assert_status(
            &call_with(&api, "POST", path, &other_host, body()).await?,
            401,
            "other host",
        );
        let expired = token(TEST_REST_ACCESS_KEY, &audience, -3600);
        let reply = call_with(&api, "POST", path, &expired, body()).await?;
        assert_status(&reply, 401, "expired");
        assert!(reply.text().contains("expired"), "{}", reply.text());

        let good = token(TEST_REST_ACCESS_KEY, &audience, 3600);
        let padding = "x".repeat(1024 * 1024);
        let oversized = json!({ "target": "msg", "arguments": [padding] })
            .to_string()
            .into_bytes();
        assert_status(
            &call_with(&api, "POST", path, &good, Some(oversized)).await?,
            413,
            "oversized",
        );
        for bad in [
            &b"not json"[..],
            br#"{"arguments":[]}"#,
            br#"{"target":"msg","arguments":"x"}"#,
        ] {
            let reply = call_with(&api, "POST", path, &good, Some(bad.to_vec())).await?;
            assert_status(&reply, 400, &String::from_utf8_lossy(bad));
        }
        let versioned = format!("{path}?api-version=1.0");
        assert_status(
            &call_with(&api, "POST", &versioned, &good, body()).await?,
            400,
            "api-version",
        );
        assert_status(&call(&api, "GET", path, None).await?, 405, "GET on a send");
        assert_status(
            &call(&api, "POST", "/api/hubs/chat/nothing", None).await?,
            404,
            "no such call",
        );

        // None of these reached anyone; a good call does.
        assert_status(
            &call_with(&api, "POST", path, &good, Some(message("ok").to_string().into_bytes())).await?,
            202,
            "good",
        );
        expect_msg(&mut alice, "ok").await?;
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_access_key_serves_no_rest_api() -> TestResult {
    let node = Node::builder().hub(chat_hub()).start().await?;
    let base = node.url();
    for key in [TEST_REST_ACCESS_KEY, "another key"] {
        let bearer = token(key, &format!("{base}/api/hubs/chat/:send"), 3600);
        let reply = call_with(
            &base,
            "POST",
            "/api/hubs/chat/:send",
            &bearer,
            Some(b"{\"target\":\"t\"}".to_vec()),
        )
        .await?;
        assert_status(&reply, 404, "REST API off");
    }
    let health = http_request_with_body(addr_of(&base)?, "HEAD", "/api/health", &[], b"").await?;
    assert_status(&health, 404, "health of an API that is off");
    node.stop().await;
    Ok(())
}

/// How long the Python script may run (each of its requests has a 10 s timeout; a passing run takes a second).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(90);

/// The same calls from Python's standard library (`tests/python/rest_client.py`: urllib, tokens signed with
/// `hmac`), as an application in another language makes them. Needs `python3` on `PATH` (`HUBMESH_PYTHON` names
/// another interpreter); no package is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_the_rest_api() -> TestResult {
    let cluster = TestCluster::start(3, || vec![chat_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let (mut alice, alice_id) = member(&cluster.url(0).unwrap(), "alice").await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/rest_client.py");
    let python = std::env::var("HUBMESH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let run = tokio::process::Command::new(python)
        .arg(script)
        .args([
            &cluster.url(2).unwrap(),
            TEST_REST_ACCESS_KEY,
            "chat",
            &alice_id,
            "alice",
        ])
        .kill_on_drop(true)
        .output();
    let output = timeout(PYTHON_TIMEOUT, run).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rest_client.py: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), 13, "{stdout}");
    // A broadcast, a user send and a send by id take three paths, with no order between them
    // (docs/semantics.md, "Ordering"): each arrives once, in any order.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            next_msg(&mut alice, ARRIVAL)
                .await?
                .ok_or_else(|| format!("only {got:?} arrived"))?,
        );
    }
    got.sort();
    assert_eq!(got, ["from python", "to connection", "to user"]);
    expect_no_msg(&mut alice).await?;
    cluster.stop().await;
    Ok(())
}

/// `hubmesh node`'s configuration turns the API on: `HUBMESH_REST__ACCESS_KEY` (here through the same loading and
/// `NodeSettings::builder` the command uses) makes a node that accepts tokens signed with that key, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_key_setting_turns_the_api_on() -> TestResult {
    use hubmesh_cli::config::{NodeConfig, Overrides};

    let env = [
        ("HUBMESH_HTTP__LISTEN", "127.0.0.1:0"),
        ("HUBMESH_REST__ACCESS_KEY", "configured key"),
    ];
    let settings = NodeConfig::load_with_env(None, env, &Overrides::new())?.node_settings()?;
    let node = settings.builder().start().await?;
    let base = node.url();
    let path = "/api/hubs/demo/:send";
    let body = || Some(message("configured").to_string().into_bytes());
    let signed = token("configured key", &format!("{base}{path}"), 3600);
    assert_status(
        &call_with(&base, "POST", path, &signed, body()).await?,
        202,
        "signed with the configured key",
    );
    let other = token(TEST_REST_ACCESS_KEY, &format!("{base}{path}"), 3600);
    assert_status(
        &call_with(&base, "POST", path, &other, body()).await?,
        401,
        "signed with another key",
    );
    node.stop().await;
    Ok(())
}

/// The chat hub of application `shop`, as Azure names it: `shop_chat`.
fn shop_chat_hub() -> Hub {
    async fn who_am_i(caller: Caller) -> Result<String, HubError> {
        Ok(caller.connection_id().to_string())
    }
    Hub::new("shop_chat").method("WhoAmI", who_am_i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_from_every_group_and_naming_the_application() -> TestResult {
    timeout(Duration::from_secs(120), async {
        let cluster = TestCluster::start(3, || vec![chat_hub(), shop_chat_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let bases: Vec<String> = (0..3).map(|index| cluster.url(index).unwrap()).collect();
        // alice on node 1, bob on nodes 1 and 2; every call goes to node 3.
        let (mut alice, alice_id) = member(&bases[0], "alice").await?;
        let (mut bob, _) = member(&bases[1], "bob").await?;
        let (mut bob_too, _) = member(&bases[0], "bob").await?;
        let api = &bases[2];
        for room in ["room1", "room2"] {
            let target = format!("/api/hubs/chat/groups/{room}/connections/{alice_id}");
            assert_status(&call(api, "PUT", &target, None).await?, 200, "alice joins");
            let target = format!("/api/hubs/chat/users/bob/groups/{room}");
            assert_status(&call(api, "PUT", &target, None).await?, 200, "bob joins");
        }
        let send_to_rooms = async |payload: &str| -> TestResult {
            for room in ["room1", "room2"] {
                let target = format!("/api/hubs/chat/groups/{room}/:send");
                assert_status(
                    &call(api, "POST", &target, Some(message(payload))).await?,
                    202,
                    "room send",
                );
            }
            Ok(())
        };
        send_to_rooms("both in").await?;
        for client in [&mut alice, &mut bob, &mut bob_too] {
            expect_msg(client, "both in").await?;
            expect_msg(client, "both in").await?;
        }

        // alice leaves every group; her user group stays (a user send still reaches her).
        let target = format!("/api/hubs/chat/connections/{alice_id}/groups?api-version=2022-06-01");
        assert_status(
            &call(api, "DELETE", &target, None).await?,
            200,
            "alice leaves every group",
        );
        send_to_rooms("without alice").await?;
        for client in [&mut bob, &mut bob_too] {
            expect_msg(client, "without alice").await?;
            expect_msg(client, "without alice").await?;
        }
        let target = "/api/hubs/chat/users/alice/:send";
        assert_status(
            &call(api, "POST", target, Some(message("to alice"))).await?,
            202,
            "user send",
        );
        expect_msg(&mut alice, "to alice").await?;

        // Every connection of bob leaves every group: the rooms are empty.
        let target = "/api/hubs/chat/users/bob/groups";
        assert_status(&call(api, "DELETE", target, None).await?, 200, "bob leaves every group");
        send_to_rooms("nobody").await?;
        for room in ["room1", "room2"] {
            let target = format!("/api/hubs/chat/groups/{room}");
            assert_status(&call(api, "HEAD", &target, None).await?, 404, "an empty room");
        }
        let target = "/api/hubs/chat/users/nobody/groups";
        assert_status(
            &call(api, "DELETE", target, None).await?,
            200,
            "a user with no connection",
        );
        let target = "/api/hubs/chat/connections/nobody.node-1/groups";
        assert_status(&call(api, "DELETE", target, None).await?, 404, "an unknown connection");

        // `application=shop` addresses hub `shop_chat`, whose client is on node 2.
        let mut shopper = TestClient::to(&format!("{}/shop_chat", bases[1])).connect().await?;
        shopper.invoke_ok_keeping_others("WhoAmI", json!([])).await?;
        let target = "/api/hubs/chat/:send?application=shop&api-version=2022-06-01";
        assert_status(
            &call(api, "POST", target, Some(message("to the shop"))).await?,
            202,
            "application send",
        );
        expect_msg(&mut shopper, "to the shop").await?;
        let target = "/api/hubs/chat/:send?application=other";
        assert_status(
            &call(api, "POST", target, Some(message("x"))).await?,
            404,
            "no hub other_chat",
        );
        let target = "/api/hubs/chat/:send?application=not-a-name";
        assert_status(
            &call(api, "POST", target, Some(message("x"))).await?,
            400,
            "a bad application name",
        );
        for client in [&mut alice, &mut bob, &mut bob_too] {
            expect_no_msg(client).await?;
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}
