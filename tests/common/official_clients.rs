//! The official client script (`tests/node/cluster-client.mjs`) driven over stdin/stdout: official
//! `@microsoft/signalr` clients with `withStatefulReconnect()` (or over Server-Sent Events or long polling, with
//! automatic reconnect), one per URL given. Shared by the tests that take nodes
//! away under them.

// Each test binary that includes this file uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use tokio::time::timeout;

use crate::npm;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The official client script (`tests/node/cluster-client.mjs`), with stateful reconnect, over stdin/stdout.
pub struct OfficialClients {
    pub child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

/// The script's `peers` command: every client `i` sends `count` user messages to the user of client `i + 1` and,
/// with `direct`, as many direct messages to client `i + 2`'s connection, one of each every `interval` ms.
pub fn peer_traffic(tag: &str, count: u64, interval: u64, direct: bool) -> Value {
    serde_json::json!({"cmd": "peers", "tag": tag, "count": count, "interval": interval, "userOffset": 1,
                       "directOffset": 2, "direct": direct})
}

/// How the clients get their user ids.
#[derive(Clone, Copy)]
enum Users<'a> {
    None,
    ByQuery,
    ByToken(&'a str),
}

impl OfficialClients {
    /// With `automatic`, the clients use automatic reconnect too (`withAutomaticReconnect()`).
    pub async fn start(urls: &[String], automatic: bool) -> TestResult<(OfficialClients, Value)> {
        Self::spawn(urls, automatic, Users::None).await
    }

    /// The same, and client `i` asks for user `user-<i>` in the `user` query parameter (for a hub whose user id
    /// provider reads it), for the script's user and direct traffic (`peers`).
    pub async fn start_with_users(urls: &[String], automatic: bool) -> TestResult<(OfficialClients, Value)> {
        Self::spawn(urls, automatic, Users::ByQuery).await
    }

    /// The same, client `i` being user `user-<i>` by an HS256 bearer token signed with `secret` (a node whose
    /// `auth.secret` it is).
    pub async fn start_with_tokens(
        urls: &[String],
        automatic: bool,
        secret: &str,
    ) -> TestResult<(OfficialClients, Value)> {
        Self::spawn(urls, automatic, Users::ByToken(secret)).await
    }

    /// Clients over `transport` (`ServerSentEvents` or `LongPolling`, where the official client has no stateful
    /// reconnect) with automatic reconnect, each joining the group again when it comes back as a new connection.
    pub async fn start_over(urls: &[String], transport: &str) -> TestResult<(OfficialClients, Value)> {
        Self::spawn_with(urls, true, Users::None, Some(transport)).await
    }

    async fn spawn(urls: &[String], automatic: bool, users: Users<'_>) -> TestResult<(OfficialClients, Value)> {
        Self::spawn_with(urls, automatic, users, None).await
    }

    /// With a `transport`, the clients are not stateful and join again after a reconnect; else they use stateful
    /// reconnect over WebSockets.
    async fn spawn_with(
        urls: &[String],
        automatic: bool,
        users: Users<'_>,
        transport: Option<&str>,
    ) -> TestResult<(OfficialClients, Value)> {
        let dir = tokio::task::spawn_blocking(npm::ensure_installed).await??;
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("cluster-client.mjs"))
            .args(urls)
            .env("HUBMESH_STATEFUL", if transport.is_none() { "1" } else { "" })
            .env("HUBMESH_TRANSPORT", transport.unwrap_or("WebSockets"))
            .env("HUBMESH_REJOIN", if transport.is_some() { "1" } else { "" })
            .env("HUBMESH_AUTOMATIC", if automatic { "1" } else { "" })
            .env("HUBMESH_USERS", if matches!(users, Users::ByQuery) { "1" } else { "" })
            .env(
                "HUBMESH_JWT_SECRET",
                if let Users::ByToken(secret) = users { secret } else { "" },
            )
            .env(
                "HUBMESH_CLIENT_LOG",
                std::env::var("HUBMESH_CLIENT_LOG").unwrap_or_default(),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let input = child.stdin.take().ok_or("no stdin")?;
        let output = child.stdout.take().ok_or("no stdout")?;
        let mut clients = OfficialClients {
            child,
            input,
            output: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(output)),
        };
        let ready = clients.read().await?;
        if ready["ready"] != true {
            return Err(format!("the official clients did not start: {ready}").into());
        }
        Ok((clients, ready))
    }

    pub async fn read(&mut self) -> TestResult<Value> {
        let line = timeout(Duration::from_secs(60), self.output.next_line())
            .await??
            .ok_or("the client script ended")?;
        Ok(serde_json::from_str(&line)?)
    }

    pub async fn ask(&mut self, command: Value) -> TestResult<Value> {
        use tokio::io::AsyncWriteExt;
        self.input.write_all(format!("{command}\n").as_bytes()).await?;
        self.input.flush().await?;
        self.read().await
    }

    /// Checks that none of the first `count` clients was closed and each is the connection it was when `ready`
    /// (the script's first answer) listed it, `after` what (for the messages).
    pub async fn assert_carried_on(&mut self, count: usize, ready: &Value, after: &str) -> TestResult {
        for index in 0..count {
            let closed = self
                .ask(serde_json::json!({"cmd": "closed", "index": index, "ms": 0}))
                .await?;
            assert_eq!(
                closed["ok"],
                serde_json::json!(false),
                "client {index} was closed: {closed}"
            );
        }
        let ids = self.ask(serde_json::json!({"cmd": "ids"})).await?;
        assert_eq!(ids["ids"], ready["ids"], "a client is another connection after {after}");
        Ok(())
    }

    /// Ends the script and waits for it.
    pub async fn quit(mut self) {
        let _ = self.ask(serde_json::json!({"cmd": "quit"})).await;
        let _ = self.child.wait().await;
    }
}
