//! Official `@microsoft/signalr` clients in the load (`tests/node/chaos-clients.mjs`): one per node, JSON and
//! MessagePack in turn, each with its own user, in a few groups and sending to them all the time, as the raw
//! clients of `clients.rs` do. The script reports every event on standard output; this module files them in the
//! same record, so every invariant checks them too. Their slots are named `n<node>o<slot>`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::clients::{user_token, Connection, Load, Message, Sent};

/// One official client: its slot name, its node, its groups.
pub struct OfficialSlot {
    pub name: String,
    pub node: usize,
    pub groups: Vec<String>,
}

/// Runs the script for `slots` until the load stops: files what it reports, tells it when sending stops, and
/// ends it with the load.
pub async fn run_official(load: Arc<Load>, slots: Vec<OfficialSlot>) -> anyhow::Result<()> {
    let dir = tokio::task::spawn_blocking(super::npm::ensure_installed)
        .await?
        .map_err(|error| anyhow::anyhow!(error))?;
    let entries: Vec<Value> = slots
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            json!({
                "name": slot.name,
                "url": format!("http://{}", load.nodes[slot.node]),
                "token": user_token(&format!("u-{}", slot.name)),
                "groups": slot.groups,
                "msgpack": index % 2 == 1,
            })
        })
        .collect();
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("chaos-clients.mjs"))
        .arg(serde_json::to_string(&entries)?)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut input = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let output = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(output).lines();
    // The script's clock is the epoch; the record's is the load's.
    let epoch_at_start = SystemTime::now().duration_since(UNIX_EPOCH)?.saturating_sub(load.now());
    let at = |ms: &Value| Duration::from_millis(ms.as_u64().unwrap_or_default()).saturating_sub(epoch_at_start);
    let node_of = |label: &str| {
        let name = label.split('.').next().unwrap_or_default();
        slots.iter().find(|slot| slot.name == name)
    };
    let mut stop_told = false;
    loop {
        if !stop_told && !load.sending.load(Ordering::Relaxed) {
            input.write_all(b"stop\n").await?;
            stop_told = true;
        }
        if load.stop.load(Ordering::Relaxed) {
            let _ = input.write_all(b"quit\n").await;
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            return Ok(());
        }
        let line = match tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await {
            Err(_) => continue,
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => anyhow::bail!("the official clients' script ended"),
            Ok(Err(error)) => return Err(error.into()),
        };
        let event: Value = serde_json::from_str(&line)?;
        let label = event["label"].as_str().unwrap_or_default().to_owned();
        let Some(slot) = node_of(&label) else {
            continue;
        };
        match event["ev"].as_str() {
            Some("open") => {
                let id = event["id"].as_str().unwrap_or_default().to_owned();
                load.current
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .insert(slot.name.clone(), id.clone());
                let connection = Connection {
                    label,
                    node: slot.node,
                    user: format!("u-{}", slot.name),
                    id,
                    groups: slot.groups.clone(),
                    opened: at(&event["t"]),
                    joined: None,
                    closed: None,
                    close_reason: None,
                    stateful: false,
                    resumes: Vec::new(),
                    resuming: false,
                };
                load.with(|record| record.connections.push(connection));
            }
            Some("joined") => {
                let joined = at(&event["t"]);
                load.with(|record| {
                    if let Some(connection) = record.connections.iter_mut().rev().find(|c| c.label == label) {
                        connection.joined = Some(joined);
                    }
                });
            }
            Some("closed") => {
                let closed = at(&event["t"]);
                let reason = event["reason"].as_str().unwrap_or_default().to_owned();
                load.with(|record| {
                    if let Some(connection) = record.connections.iter_mut().rev().find(|c| c.label == label) {
                        connection.closed = Some(closed);
                        connection.close_reason = Some(reason);
                    }
                });
            }
            Some("sent") => {
                let message = Message {
                    kind: 'g',
                    sender: label,
                    sequence: event["seq"].as_u64().unwrap_or_default(),
                    target: event["target"].as_str().unwrap_or_default().to_owned(),
                };
                let sent = Sent {
                    message,
                    node: slot.node,
                    at: at(&event["at"]),
                    done: at(&event["done"]),
                    accepted: event["ok"].as_bool().unwrap_or(false),
                };
                load.with(|record| record.sent.push(sent));
            }
            Some("got") => {
                let text = event["text"].as_str().unwrap_or_default().to_owned();
                let received = at(&event["t"]);
                load.with(|record| match Message::parse(&text) {
                    Some(message) => record.received.push((label, message, received)),
                    None => record.garbled.push((label, text)),
                });
            }
            _ => {}
        }
    }
}
