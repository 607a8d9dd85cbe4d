//! `hubmesh drain --url URL --key KEY [--wait]`: asks a node to drain and exit, over `POST /_hubmesh/drain` with a
//! bearer token signed with the node's REST access key (the REST API's rule: HS256, `exp`, `aud` = the request's
//! URL), and with `--wait` waits until the node is gone (its port refuses connections).
//!
//! A module of the binary; `hubmesh rolling-restart` ([`super::rolling`]) drains through [`ask_to_drain`] and
//! [`wait_until_gone`] too. Plain HTTP only, like `hubmesh status` (whose request function it uses).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::status::{authority, request};

/// The node's drain route (`hubmesh::node::http::DRAIN_PATH` in the library, which does not export it).
pub(crate) const DRAIN_PATH: &str = "/_hubmesh/drain";

/// How long the operator's token is valid: long enough for a clock a little off, short enough not to be worth
/// stealing from a log.
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// How often a wait asks again.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// How long one HTTP request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub(crate) struct DrainArgs {
    /// The node's URL, http://HOST:PORT (its HTTP address, as `Now listening on:` printed it).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The node's REST access key (`rest.access_key`): the request's token is signed with it.
    #[arg(long, env = "HUBMESH_REST__ACCESS_KEY", hide_env_values = true, value_name = "KEY")]
    key: Option<String>,
    /// A file holding the REST access key (surrounding whitespace trimmed), as `rest.access_key_file`.
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    key_file: Option<PathBuf>,
    /// Wait until the node has drained and exited (its HTTP port refuses connections).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits for the node to exit.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs `hubmesh drain`.
pub(crate) async fn run_drain(args: &DrainArgs) -> anyhow::Result<()> {
    let Some(key) = access_key(args.key.as_deref(), args.key_file.as_deref())? else {
        bail!("the node's REST access key is needed: --key, --key-file or HUBMESH_REST__ACCESS_KEY");
    };
    let address = authority(&args.url)?;
    let started = Instant::now();
    let node = ask_to_drain(&address, key.as_bytes()).await?;
    eprintln!("{node} is draining");
    if args.wait {
        let took = wait_until_gone(&address, args.timeout).await?;
        eprintln!("{node} has exited after {} ms", took.as_millis());
    }
    println!(
        "{}",
        json!({ "node": node, "draining": true, "exited": args.wait, "ms": started.elapsed().as_millis() as u64 })
    );
    Ok(())
}

/// A token for `POST http://{address}/_hubmesh/drain`, signed with `key`.
/// The REST access key given as `--key`, or read from `--key-file` (surrounding whitespace trimmed); none if
/// neither was given.
pub(crate) fn access_key(key: Option<&str>, key_file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    match (key, key_file) {
        (Some(key), _) => Ok(Some(key.to_owned())),
        (None, Some(file)) => Ok(Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the access key file {}", file.display()))?
                .trim()
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

fn operator_token(address: &str, key: &[u8]) -> anyhow::Result<String> {
    let expires = jsonwebtoken::get_current_timestamp() + TOKEN_LIFETIME.as_secs();
    let claims = json!({ "aud": format!("http://{address}{DRAIN_PATH}"), "exp": expires });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .context("cannot sign the operator's token")
}

/// Asks the node at `address` (`host:port`) to drain; returns its name once it answered 202.
pub(crate) async fn ask_to_drain(address: &str, key: &[u8]) -> anyhow::Result<String> {
    let token = operator_token(address, key)?;
    let bearer = format!("Bearer {token}");
    let (code, body) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        request(address, "POST", DRAIN_PATH, &[("Authorization", &bearer)]),
    )
    .await
    .map_err(|_| anyhow!("{address} did not answer within {} s", REQUEST_TIMEOUT.as_secs()))??;
    let text = String::from_utf8_lossy(&body).chars().take(300).collect::<String>();
    match code {
        202 => {
            let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Ok(answer["node"].as_str().unwrap_or(address).to_owned())
        }
        401 => bail!("{address} refused the drain (401): is the key its rest.access_key? {text}"),
        404 => bail!("{address} has no drain route (404): it needs a REST access key (rest.access_key). {text}"),
        code => bail!("{address} answered HTTP {code}: {text}"),
    }
}

/// Waits until nothing accepts connections at `address` any more (the node has exited), at most `limit`; returns
/// how long it took.
pub(crate) async fn wait_until_gone(address: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let probe = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(address)).await;
        if matches!(probe, Ok(Err(_))) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            bail!(
                "{address} still accepts connections after {}",
                humantime::format_duration(limit)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
