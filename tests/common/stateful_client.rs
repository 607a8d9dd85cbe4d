//! A raw client of stateful reconnect (handshake version 2) that reads as the official client does: the Sequence
//! message after a reconnect says where the server resumes, and records it already had are dropped by their
//! sequence id. Shared by the tests that cut a stateful connection's socket.

// Each test binary that includes this file uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use hubmesh::testing::client::{Protocol, TestClient};
use serde_json::Value;
use tokio::time::Instant;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A stateful client and what it received.
pub struct StatefulClient {
    pub raw: TestClient,
    /// The sequence id of the next trackable record; `None` until the Sequence message after a reconnect.
    next_id: Option<u64>,
    /// The highest sequence id received.
    pub received: u64,
}

fn trackable(message: &Value) -> bool {
    matches!(message["type"].as_u64(), Some(1..=5))
}

impl StatefulClient {
    /// Connects to `url` (a WebSocket URL with the connection's token) and does a version 2 handshake in JSON.
    pub async fn connect(url: &str) -> TestResult<StatefulClient> {
        Self::connect_with(url, Protocol::Json).await
    }

    /// Negotiates a stateful connection at `hub` (a hub's URL), connects it in `protocol` and joins it to `group`
    /// (the demo hub's `JoinGroup`, invocation "1"): the client, its token and its connection id.
    pub async fn joined(hub: &str, protocol: Protocol, group: &str) -> TestResult<(StatefulClient, String, String)> {
        let body = hubmesh::testing::client::negotiate(hub, "&useStatefulReconnect=true", &[]).await?;
        let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
        let id = body["connectionId"].as_str().ok_or("no id")?.to_owned();
        let mut client = Self::connect_with(&format!("{hub}?id={token}"), protocol).await?;
        client.join(group).await?;
        Ok((client, token, id))
    }

    /// Joins `group` (the demo hub's `JoinGroup`, invocation "1", the client's first message).
    pub async fn join(&mut self, group: &str) -> TestResult {
        self.raw
            .send_invocation_with_id("1", "JoinGroup", serde_json::json!([group]))
            .await?;
        let joined = self.read().await?;
        if joined["invocationId"] != "1" || !joined["error"].is_null() {
            return Err(format!("not joined to {group}: {joined}").into());
        }
        Ok(())
    }

    /// Connects to `url` and does a version 2 handshake in `protocol`.
    pub async fn connect_with(url: &str, protocol: Protocol) -> TestResult<StatefulClient> {
        let raw = TestClient::to(url)
            .protocol(protocol)
            .handshake_version(2)
            .connect()
            .await?;
        Ok(StatefulClient::new(raw))
    }

    /// A stateful client over `raw`, a socket that did a version 2 handshake.
    pub fn new(raw: TestClient) -> StatefulClient {
        StatefulClient {
            raw,
            next_id: Some(1),
            received: 0,
        }
    }

    /// The next hub message to act on: Sequence handled, duplicates dropped, as the official client does.
    pub async fn read(&mut self) -> TestResult<Value> {
        for _ in 0..10_000 {
            let message = self.raw.record().await?.value;
            if let Some(message) = self.take(message)? {
                return Ok(message);
            }
        }
        Err("no message to act on".into())
    }

    /// As [`StatefulClient::read`], `None` if no message to act on came within `within`.
    pub async fn read_within(&mut self, within: Duration) -> TestResult<Option<Value>> {
        let deadline = Instant::now() + within;
        for _ in 0..10_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(record) = self.raw.record_within(left).await? else {
                return Ok(None);
            };
            if let Some(message) = self.take(record.value)? {
                return Ok(Some(message));
            }
        }
        Err("no message to act on".into())
    }

    /// What the official client does with a record: a Sequence sets where the server resumes, a record it had
    /// already is dropped; the rest is to act on.
    fn take(&mut self, message: Value) -> TestResult<Option<Value>> {
        if message["type"] == 9 {
            let id = message["sequenceId"].as_u64().ok_or("Sequence without an id")?;
            if id > self.received + 1 {
                return Err("Sequence ID greater than amount of messages we've received.".into());
            }
            self.next_id = Some(id);
            return Ok(None);
        }
        let Some(next_id) = self.next_id else {
            // Before the Sequence message after a reconnect, everything is dropped.
            return Ok(None);
        };
        if trackable(&message) {
            self.next_id = Some(next_id + 1);
            if next_id <= self.received {
                return Ok(None);
            }
            self.received = next_id;
        }
        Ok(Some(message))
    }

    /// Reconnects with `url` (the same token), then sends Sequence with `client_next`, as the official client does.
    pub async fn reconnect(&mut self, url: &str, client_next: u64) -> TestResult {
        self.raw.reconnect(url).await?;
        self.next_id = None;
        Ok(self.raw.send_sequence(client_next).await?)
    }
}

/// The group (`g`), direct (`d`) and broadcast (`b`) message numbers a test client got, in arrival order.
#[derive(Default)]
pub struct Numbered {
    pub group: Vec<u64>,
    pub direct: Vec<u64>,
    pub broadcast: Vec<u64>,
}

impl Numbered {
    /// Files a group, direct or broadcast message by its number; anything else (completions) is ignored.
    pub fn file(&mut self, message: &Value) -> TestResult {
        if message["type"] != 1 {
            return Ok(());
        }
        let n = message["arguments"][0].as_u64().ok_or("a message without its number")?;
        match message["target"].as_str() {
            Some("g") => self.group.push(n),
            Some("d") => self.direct.push(n),
            Some("b") => self.broadcast.push(n),
            _ => {}
        }
        Ok(())
    }
}
