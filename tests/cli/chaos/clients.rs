//! The load: raw test clients on every node, each a member of a few groups and sending to them all the time, and a
//! REST sender per node sending to users and to connections by id. Every message is a string
//! `kind|sender|sequence|target|sent_ms`; everything sent and received is logged with its time for the checks.
//! A client whose connection ends (its node was killed, or closed it after a freeze) connects again, as a new
//! connection, and joins its groups again; each such connection is one [`Connection`] in the log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::stateful_client::StatefulClient;
use hubmesh::testing::client::{http_request_with_body, Event, TestClient};
use jsonwebtoken::{encode, EncodingKey, Header};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::nodes::{AUTH_SECRET, REST_KEY};

/// How often each client sends to one of its groups.
pub const GROUP_SEND_EVERY: Duration = Duration::from_millis(250);
/// How often each node's REST sender sends (alternately to a user and to a connection).
pub const REST_SEND_EVERY: Duration = Duration::from_millis(200);

/// A message, as its text says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// `g` group, `u` user, `d` direct (to a connection id).
    pub kind: char,
    pub sender: String,
    pub sequence: u64,
    pub target: String,
}

impl Message {
    pub fn text(&self, sent_ms: u128) -> String {
        format!(
            "{}|{}|{}|{}|{sent_ms}",
            self.kind, self.sender, self.sequence, self.target
        )
    }

    pub fn parse(text: &str) -> Option<Message> {
        let mut parts = text.split('|');
        let kind = parts.next()?.chars().next()?;
        let sender = parts.next()?.to_owned();
        let sequence = parts.next()?.parse().ok()?;
        let target = parts.next()?.to_owned();
        Some(Message {
            kind,
            sender,
            sequence,
            target,
        })
    }
}

/// A send the harness made: when it started, when it was handed off, whether it was accepted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: Message,
    /// The node the sender used.
    pub node: usize,
    pub at: Duration,
    pub done: Duration,
    pub accepted: bool,
}

/// One connection of a client slot, from its handshake to its end.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `n<node>c<slot>.<incarnation>`: the sender name of its group sends.
    pub label: String,
    pub node: usize,
    pub user: String,
    pub id: String,
    pub groups: Vec<String>,
    pub opened: Duration,
    /// When every JoinGroup had completed.
    pub joined: Option<Duration>,
    pub closed: Option<Duration>,
    pub close_reason: Option<String>,
    /// A stateful-reconnect connection (`run_stateful_client`): its socket may drop and the connection go on.
    pub stateful: bool,
    /// When its socket came back, and through which node (stateful connections only).
    pub resumes: Vec<(Duration, usize)>,
    /// Its socket dropped and it is trying to come back (stateful connections only): the cluster may or may not
    /// hold it meanwhile.
    pub resuming: bool,
}

#[derive(Debug, Default)]
pub struct Record {
    pub sent: Vec<Sent>,
    /// `(connection label, message, received at)`, in the order each connection read them.
    pub received: Vec<(String, Message, Duration)>,
    pub connections: Vec<Connection>,
    /// Texts that did not parse, with who got them.
    pub garbled: Vec<(String, String)>,
}

/// Shared by every task of the load.
pub struct Load {
    pub started: Instant,
    pub record: Mutex<Record>,
    pub stop: AtomicBool,
    /// Whether sending goes on (the quiet end of a run stops it before the receivers stop reading).
    pub sending: AtomicBool,
    /// Each node's HTTP address.
    pub nodes: Vec<SocketAddr>,
    /// The current connection id of each client slot (`n<node>c<slot>`), for direct sends.
    pub current: Mutex<HashMap<String, String>>,
}

impl Load {
    pub fn new(nodes: Vec<SocketAddr>) -> Arc<Load> {
        Arc::new(Load {
            started: Instant::now(),
            record: Mutex::new(Record::default()),
            stop: AtomicBool::new(false),
            sending: AtomicBool::new(true),
            nodes,
            current: Mutex::new(HashMap::new()),
        })
    }

    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn with<R>(&self, apply: impl FnOnce(&mut Record) -> R) -> R {
        apply(&mut self.record.lock().unwrap_or_else(|poison| poison.into_inner()))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The connections open now, each with its groups, that finished joining them.
    pub fn open_members(&self) -> Vec<Connection> {
        self.with(|record| {
            record
                .connections
                .iter()
                .filter(|connection| connection.closed.is_none() && connection.joined.is_some())
                .cloned()
                .collect()
        })
    }
}

/// A bearer token for `user`, signed with the nodes' auth secret.
pub fn user_token(user: &str) -> String {
    signed(json!({ "sub": user, "exp": 4_102_444_800u64 }), AUTH_SECRET)
}

/// A REST token for the call to `url` (Azure's rule: `aud` is the request URL).
fn rest_token(url: &str) -> String {
    signed(json!({ "aud": url, "exp": 4_102_444_800u64 }), REST_KEY)
}

/// `claims` as an HS256 token signed with `secret`.
fn signed(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// One client slot on node `node`: connects, joins `groups`, sends to them in turn, logs what it gets; connects
/// again whenever its connection ends, until the load stops.
pub async fn run_client(load: Arc<Load>, node: usize, slot: usize, groups: Vec<String>) {
    let name = format!("n{node}c{slot}");
    let user = format!("u-{name}");
    let token = user_token(&user);
    let mut incarnation = 0u32;
    while !load.stopping() {
        let url = format!("ws://{}/hub", load.nodes[node]);
        let connected =
            tokio::time::timeout(Duration::from_secs(5), TestClient::to(&url).bearer(&token).connect()).await;
        let Ok(Ok(mut client)) = connected else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        incarnation += 1;
        let label = format!("{name}.{incarnation}");
        let opened = load.now();
        let id = match client.invoke_ok_keeping_others("WhoAmI", json!([])).await {
            Ok(Value::String(id)) => id,
            _ => continue,
        };
        let connection = Connection {
            label,
            node,
            user: user.clone(),
            id,
            groups: groups.clone(),
            opened,
            joined: None,
            closed: None,
            close_reason: None,
            stateful: false,
            resumes: Vec::new(),
            resuming: false,
        };
        let index = load.with(|record| {
            record.connections.push(connection.clone());
            record.connections.len() - 1
        });
        let reason = session(&load, &mut client, &name, &connection, index).await;
        let closed = load.now();
        load.with(|record| {
            if let Some(connection) = record.connections.get_mut(index) {
                connection.closed = Some(closed);
                connection.close_reason = Some(reason);
            }
        });
        client.close_socket().await;
    }
}

/// One connection's life: joins, then sends and reads until it ends or the load stops; returns why it ended.
async fn session(load: &Load, client: &mut TestClient, name: &str, connection: &Connection, index: usize) -> String {
    let (node, label, id, groups) = (
        connection.node,
        connection.label.as_str(),
        &connection.id,
        &connection.groups,
    );
    for group in groups {
        if let Err(error) = client.join_group(group).await {
            return format!("JoinGroup({group}) failed: {error}");
        }
    }
    let joined = load.now();
    load.with(|record| {
        if let Some(connection) = record.connections.get_mut(index) {
            connection.joined = Some(joined);
        }
    });
    load.current
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(name.to_owned(), id.to_owned());
    let mut sequence = 0u64;
    let mut next_send = Instant::now();
    loop {
        if load.stopping() {
            return "the harness stopped".to_owned();
        }
        if Instant::now() >= next_send && load.sending.load(Ordering::Relaxed) {
            sequence += 1;
            let group = &groups[(sequence as usize) % groups.len()];
            let message = Message {
                kind: 'g',
                sender: label.to_owned(),
                sequence,
                target: group.clone(),
            };
            let at = load.now();
            let sent = client
                .send_invocation("SendToGroup", json!([group, message.text(at.as_millis())]))
                .await;
            let done = load.now();
            let accepted = sent.is_ok();
            load.with(|record| {
                record.sent.push(Sent {
                    message,
                    node,
                    at,
                    done,
                    accepted,
                })
            });
            if let Err(error) = sent {
                return format!("sending failed: {error}");
            }
            next_send += GROUP_SEND_EVERY;
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(5));
        match client.event_within(wait).await {
            Ok(None) => {}
            Ok(Some(Event::Record(record))) => match record.kind() {
                1 if record.value["target"] == "msg" => log_receipt(load, label, &record.value),
                7 => return format!("Close message: {}", record.value),
                _ => {}
            },
            Ok(Some(Event::Closed(code))) => return format!("socket closed (code {code:?})"),
            Err(error) => return format!("reading failed: {error}"),
        }
    }
}

/// How long a stateful client whose socket dropped tries to come back before it starts a new connection: longer
/// than failure detection and a take-over (docs/semantics.md, "A node's death and its stateful connections").
const RESUME_FOR: Duration = Duration::from_secs(30);
/// How often a stateful client acknowledges what it got (the official client acknowledges within a second).
const ACK_EVERY: Duration = Duration::from_millis(500);

/// One stateful-reconnect client slot on node `node`, a receiver only: negotiates stateful reconnect, joins
/// `groups` and logs what it gets. When its socket drops (its node was killed or restarted) it reconnects with its
/// token through the other nodes in turn, as the official client with `withStatefulReconnect()` does through a
/// load balancer, and goes on as the same connection; only a Close message, or no way back within [`RESUME_FOR`],
/// ends the connection, and the slot then connects again as a new one.
pub async fn run_stateful_client(load: Arc<Load>, node: usize, slot: usize, groups: Vec<String>) {
    let name = format!("n{node}s{slot}");
    let user = format!("u-{name}");
    let bearer = format!("Bearer {}", user_token(&user));
    let mut incarnation = 0u32;
    while !load.stopping() {
        let Some((mut client, token, id)) = open_stateful(&load, node, &bearer).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        incarnation += 1;
        let connection = Connection {
            label: format!("{name}.{incarnation}"),
            node,
            user: user.clone(),
            id,
            groups: groups.clone(),
            opened: load.now(),
            joined: None,
            closed: None,
            close_reason: None,
            stateful: true,
            resumes: Vec::new(),
            resuming: false,
        };
        let index = load.with(|record| {
            record.connections.push(connection.clone());
            record.connections.len() - 1
        });
        let reason = stateful_session(&load, &mut client, &name, &token, &connection, index).await;
        let closed = load.now();
        load.with(|record| {
            if let Some(connection) = record.connections.get_mut(index) {
                connection.closed.get_or_insert(closed);
                connection.close_reason = Some(reason);
            }
        });
        client.raw.close_socket().await;
    }
}

/// Negotiates stateful reconnect at node `node` and connects: the client, its connection token and its id.
async fn open_stateful(load: &Load, node: usize, bearer: &str) -> Option<(StatefulClient, String, String)> {
    let http = load.nodes[node];
    let headers = [("Authorization", bearer)];
    let negotiate = http_request_with_body(
        http,
        "POST",
        "/hub/negotiate?negotiateVersion=1&useStatefulReconnect=true",
        &headers,
        b"",
    );
    let reply = tokio::time::timeout(Duration::from_secs(5), negotiate)
        .await
        .ok()?
        .ok()?;
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    let token = body["connectionToken"].as_str()?.to_owned();
    let id = body["connectionId"].as_str()?.to_owned();
    let connect = TestClient::to(&format!("ws://{http}/hub?id={token}"))
        .authorization(bearer)
        .handshake_version(2)
        .connect();
    let raw = tokio::time::timeout(Duration::from_secs(5), connect).await.ok()?.ok()?;
    Some((StatefulClient::new(raw), token, id))
}

/// What a stateful client does with one message: logs a hub message; a Close message ends the connection.
fn stateful_message(load: &Load, label: &str, message: &Value) -> Option<String> {
    match message["type"].as_u64() {
        Some(1) if message["target"] == "msg" => {
            log_receipt(load, label, message);
            None
        }
        Some(7) => Some(format!("Close message: {message}")),
        _ => None,
    }
}

/// One stateful connection's life: joins, then reads, acknowledges and resumes until it ends or the load stops.
async fn stateful_session(
    load: &Load,
    client: &mut StatefulClient,
    name: &str,
    token: &str,
    connection: &Connection,
    index: usize,
) -> String {
    let label = connection.label.as_str();
    for (number, group) in connection.groups.iter().enumerate() {
        let invocation = format!("join{number}");
        if let Err(error) = client
            .raw
            .send_invocation_with_id(&invocation, "JoinGroup", json!([group]))
            .await
        {
            return format!("JoinGroup({group}) failed: {error}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.read_within(left).await {
                Ok(Some(message)) if message["type"] == 3 && message["invocationId"] == invocation.as_str() => {
                    if !message["error"].is_null() {
                        return format!("JoinGroup({group}) failed: {message}");
                    }
                    break;
                }
                Ok(Some(message)) => {
                    if let Some(reason) = stateful_message(load, label, &message) {
                        return reason;
                    }
                }
                Ok(None) => return format!("JoinGroup({group}) had no answer in 5 s"),
                Err(error) => return format!("JoinGroup({group}) failed: {error}"),
            }
        }
    }
    let joined = load.now();
    load.with(|record| {
        if let Some(connection) = record.connections.get_mut(index) {
            connection.joined = Some(joined);
        }
    });
    load.current
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .insert(name.to_owned(), connection.id.clone());
    // The client's own messages the server acknowledged (the joins): it resends none after a reconnect.
    let client_next = connection.groups.len() as u64 + 1;
    let mut acked = 0;
    let mut next_ack = Instant::now() + ACK_EVERY;
    loop {
        if load.stopping() {
            return "the harness stopped".to_owned();
        }
        if Instant::now() >= next_ack {
            if client.received > acked && client.raw.send_ack(client.received).await.is_ok() {
                acked = client.received;
            }
            next_ack = Instant::now() + ACK_EVERY;
        }
        let wait = next_ack
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        match client.read_within(wait).await {
            Ok(Some(message)) => {
                if let Some(reason) = stateful_message(load, label, &message) {
                    return reason;
                }
            }
            Ok(None) => {}
            Err(error) => {
                // The socket dropped: back through the nodes in turn, the same connection.
                let dropped = format!("{error}");
                let dropped_at = load.now();
                load.with(|record| {
                    if let Some(connection) = record.connections.get_mut(index) {
                        connection.resuming = true;
                    }
                });
                match resume(load, client, connection.node, token, client_next).await {
                    Some(through) => {
                        let at = load.now();
                        load.with(|record| {
                            if let Some(connection) = record.connections.get_mut(index) {
                                connection.resumes.push((at, through));
                                connection.resuming = false;
                            }
                        });
                        acked = 0;
                    }
                    None => {
                        // It ended when its socket dropped: nothing reached it after, and its client knows (the
                        // official client's stateful reconnect fails at once on a refusal, this one keeps trying).
                        load.with(|record| {
                            if let Some(connection) = record.connections.get_mut(index) {
                                connection.closed = Some(dropped_at);
                            }
                        });
                        return format!("no resume within {RESUME_FOR:?} after: {dropped}");
                    }
                }
            }
        }
    }
}

/// Reconnects with `token` through each node in turn from the one after `node`, until one takes it or
/// [`RESUME_FOR`] passes: the node it came back through.
async fn resume(load: &Load, client: &mut StatefulClient, node: usize, token: &str, client_next: u64) -> Option<usize> {
    let deadline = Instant::now() + RESUME_FOR;
    for attempt in 1..=1_000 {
        if Instant::now() >= deadline || load.stopping() {
            return None;
        }
        let through = (node + attempt) % load.nodes.len();
        let url = format!("ws://{}/hub?id={token}", load.nodes[through]);
        match tokio::time::timeout(Duration::from_secs(5), client.reconnect(&url, client_next)).await {
            Ok(Ok(())) => return Some(through),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// Logs the harness message `invocation` (a `msg` Invocation) carries as received by `label` now.
fn log_receipt(load: &Load, label: &str, invocation: &Value) {
    let text = invocation["arguments"][0].as_str().unwrap_or_default().to_owned();
    let at = load.now();
    load.with(|log| match Message::parse(&text) {
        Some(message) => log.received.push((label.to_owned(), message, at)),
        None => log.garbled.push((label.to_owned(), text)),
    });
}

/// Node `node`'s REST sender: to a user and to a connection by id in turn, picked at random among `slots`.
pub async fn run_rest_sender(load: Arc<Load>, node: usize, slots: Vec<String>, seed: u64) {
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let sender = format!("rest{node}");
    let mut sequence = 0u64;
    let mut next_send = Instant::now();
    while !load.stopping() {
        tokio::time::sleep_until(next_send).await;
        next_send += REST_SEND_EVERY;
        if !load.sending.load(Ordering::Relaxed) {
            continue;
        }
        let slot = &slots[random.random_range(0..slots.len())];
        let direct = sequence % 2 == 1;
        let (kind, target, path) = if direct {
            let Some(id) = load
                .current
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .get(slot)
                .cloned()
            else {
                continue;
            };
            ('d', id.clone(), format!("/api/hubs/demo/connections/{id}/:send"))
        } else {
            let user = format!("u-{slot}");
            ('u', user.clone(), format!("/api/hubs/demo/users/{user}/:send"))
        };
        sequence += 1;
        let message = Message {
            kind,
            sender: sender.clone(),
            sequence,
            target,
        };
        let http = load.nodes[node];
        let authorization = format!("Bearer {}", rest_token(&format!("http://{http}{path}")));
        let at = load.now();
        let body = json!({ "target": "msg", "arguments": [message.text(at.as_millis())] }).to_string();
        let headers = [
            ("Authorization", authorization.as_str()),
            ("Content-Type", "application/json"),
        ];
        let reply = http_request_with_body(http, "POST", &path, &headers, body.as_bytes()).await;
        let done = load.now();
        let accepted = reply.is_ok_and(|reply| reply.status == 202);
        load.with(|record| {
            record.sent.push(Sent {
                message,
                node,
                at,
                done,
                accepted,
            })
        });
    }
}

/// Whether node `http` finds a connection of `user` in `group` (REST `HEAD /api/hubs/demo/users/{user}/groups/{group}`,
/// asked of the group's owner); `None` if it did not answer 200 or 404.
pub async fn user_in_group(http: SocketAddr, user: &str, group: &str) -> Option<bool> {
    let path = format!("/api/hubs/demo/users/{user}/groups/{group}");
    let authorization = format!("Bearer {}", rest_token(&format!("http://{http}{path}")));
    let reply = http_request_with_body(http, "HEAD", &path, &[("Authorization", authorization.as_str())], b"")
        .await
        .ok()?;
    match reply.status {
        200 => Some(true),
        404 => Some(false),
        _ => None,
    }
}

/// Each group's member count as node `http` answers it (`GroupCount`, asked of the group's owner), over a fresh
/// connection; `None` if the node did not answer.
pub async fn group_counts(http: SocketAddr, groups: &[String]) -> Option<Vec<u64>> {
    let connect = TestClient::to(&format!("ws://{http}/hub")).connect();
    let mut client = tokio::time::timeout(Duration::from_secs(3), connect).await.ok()?.ok()?;
    let mut counts = Vec::new();
    for group in groups {
        let count = tokio::time::timeout(Duration::from_secs(3), client.invoke_ok("GroupCount", json!([group])))
            .await
            .ok()?
            .ok()?;
        counts.push(count.as_u64()?);
    }
    client.close_socket().await;
    Some(counts)
}

/// A group's members as node `http` lists them (`GroupMembers`, asked of the group's owner), over a fresh
/// connection; `None` if the node did not answer.
pub async fn group_members(http: SocketAddr, group: &str) -> Option<Vec<String>> {
    let connect = TestClient::to(&format!("ws://{http}/hub")).connect();
    let mut client = tokio::time::timeout(Duration::from_secs(3), connect).await.ok()?.ok()?;
    let members = tokio::time::timeout(Duration::from_secs(3), client.invoke_ok("GroupMembers", json!([group])))
        .await
        .ok()?
        .ok()?;
    client.close_socket().await;
    members
        .as_array()?
        .iter()
        .map(|member| member.as_str().map(str::to_owned))
        .collect()
}
