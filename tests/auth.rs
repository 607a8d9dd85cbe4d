//! Authentication and authorization over the wire (docs/protocol.md#authentication): a real node on `127.0.0.1:0`, raw
//! HTTP requests and tokio-tungstenite WebSockets with hand-written JSON hub messages.
//!
//! Covered: 401 with an empty body on negotiate and on every transport request of a hub that requires a user,
//! for no token, a bad signature, an expired token, a wrong audience, a malformed token and a token of the wrong
//! algorithm; valid tokens from the `Authorization` header and from `access_token`; `Caller::user` and
//! `Caller::claims`; `Clients.user` routing by the user claim; hub and method requirements on claims (403, and
//! the ASP.NET invocation error); RS256 with the fixed key pair in `tests/auth-keys`; the `[auth]` configuration;
//! the test server's `/generateJwtToken` and `/authorizedhub`.
//!
//! Every test is bounded by `tokio::time::timeout`, every read by a step timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hubmesh::auth::{Authenticator, Requirement, NAME_IDENTIFIER_CLAIM};
use hubmesh::{Caller, Hub, HubError, Node, NodeHandle};
use hubmesh_cli::config::{NodeConfig, Overrides};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(5);
const RS: char = '\u{1e}';
const SECRET: &[u8] = b"hubmesh auth tests: 32+ bytes of secret";
const AUDIENCE: &str = "hubmesh-tests";

// ---------------------------------------------------------------------------------------------------------------
// Hubs and node
// ---------------------------------------------------------------------------------------------------------------

async fn whoami(caller: Caller) -> Option<String> {
    caller.user().map(str::to_owned)
}

async fn claim(caller: Caller, name: String) -> Option<String> {
    caller
        .claims()
        .and_then(|claims| claims.value(&name))
        .map(str::to_owned)
}

async fn send_to_user(caller: Caller, user: String, text: String) -> Result<(), HubError> {
    caller.clients().user(&user).send("Message", (text,))
}

async fn admin_only() -> &'static str {
    "welcome, admin"
}

/// `/secure`: authenticated users only. `/open`: anyone, with one admin method. `/admins`: role admin only.
fn hubs() -> Vec<Hub> {
    vec![
        Hub::new("secure")
            .authorize()
            .method("Whoami", whoami)
            .method("Claim", claim)
            .method("SendToUser", send_to_user),
        Hub::new("open").method("Whoami", whoami).method_authorized(
            "Admin",
            admin_only,
            Requirement::claim("role", "admin"),
        ),
        Hub::new("admins")
            .require_claim("role", "admin")
            .method("Whoami", whoami),
    ]
}

async fn start(authenticator: Authenticator) -> TestResult<NodeHandle> {
    let mut builder = Node::builder().listen("127.0.0.1:0").auth(authenticator);
    for hub in hubs() {
        builder = builder.hub(hub);
    }
    Ok(builder.start().await?)
}

fn hs256() -> Authenticator {
    Authenticator::hs256(SECRET).audience(AUDIENCE)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs_token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A valid token for `user` (in the name-identifier claim) with extra claims.
fn token_for(user: &str, extra: Value) -> String {
    let mut claims = json!({ NAME_IDENTIFIER_CLAIM: user, "aud": AUDIENCE, "exp": now() + 300 });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    hs_token(claims)
}

async fn bounded<F: Future<Output = TestResult>>(body: F) -> TestResult {
    timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| format!("the test did not finish within {} s", TEST_TIMEOUT.as_secs()))?
}

// ---------------------------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------------------------

struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request with an empty body and extra header lines; reads until the server closes (or the step
/// timeout, for streams such as SSE, whose head is all that is needed).
async fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> TestResult<HttpReply> {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tokio::task::spawn_blocking(move || -> TestResult<HttpReply> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_millis(1500)))?;
        stream.set_write_timeout(Some(STEP))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buffer[..n]),
                Err(error) if raw.is_empty() => return Err(error.into()),
                // A stream that stays open (SSE): what arrived is enough.
                Err(_) => break,
            }
        }
        parse_http(&raw)
    })
    .await?
}

fn parse_http(raw: &[u8]) -> TestResult<HttpReply> {
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("an HTTP response without a header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("a bad status line: {status_line}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Ok(HttpReply { status, headers, body })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Negotiates with `token` in the `Authorization` header; the connection token.
async fn negotiate(addr: SocketAddr, path: &str, token: &str) -> TestResult<String> {
    let auth = bearer(token);
    let reply = http(
        addr,
        "POST",
        &format!("{path}/negotiate?negotiateVersion=1"),
        &[("Authorization", &auth)],
    )
    .await?;
    assert_eq!(reply.status, 200, "negotiate: {}", reply.body);
    let body: Value = serde_json::from_str(&reply.body)?;
    Ok(body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned())
}

/// Asserts a 401 with an empty body (docs/protocol.md#error-bodies) and a Bearer challenge.
fn assert_unauthorized(reply: &HttpReply, what: &str) {
    assert_eq!(
        reply.status, 401,
        "{what}: expected 401, got {} {}",
        reply.status, reply.body
    );
    assert_eq!(reply.body, "", "{what}: a 401 must have an empty body");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|value| value.starts_with("Bearer")),
        "{what}: WWW-Authenticate {:?}",
        reply.header("www-authenticate")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// WebSocket hub client (JSON)
// ---------------------------------------------------------------------------------------------------------------

struct Client {
    ws: Ws,
    next_id: u32,
}

impl Client {
    /// Opens a WebSocket to `path_and_query` with an optional `Authorization` header and does the JSON handshake.
    async fn connect(addr: SocketAddr, path_and_query: &str, authorization: Option<&str>) -> TestResult<Client> {
        let mut request = format!("ws://{addr}{path_and_query}").into_client_request()?;
        if let Some(value) = authorization {
            request.headers_mut().insert("authorization", value.parse()?);
        }
        let (ws, _) = timeout(STEP, tokio_tungstenite::connect_async(request)).await??;
        let mut client = Client { ws, next_id: 0 };
        client
            .ws
            .send(Message::text(format!("{{\"protocol\":\"json\",\"version\":1}}{RS}")))
            .await?;
        let handshake = client.read().await?;
        assert_eq!(handshake, json!({}), "handshake response");
        Ok(client)
    }

    /// The next hub message that is not a ping.
    async fn read(&mut self) -> TestResult<Value> {
        loop {
            let message = timeout(STEP, self.ws.next()).await?.ok_or("the socket closed")??;
            let text = match message {
                Message::Text(text) => text.to_string(),
                Message::Close(frame) => return Err(format!("the socket closed: {frame:?}").into()),
                _ => continue,
            };
            for record in text.split(RS).filter(|record| !record.is_empty()) {
                let value: Value = serde_json::from_str(record)?;
                if value["type"] != json!(6) {
                    return Ok(value);
                }
            }
        }
    }

    /// Invokes `target` and returns its Completion.
    async fn invoke(&mut self, target: &str, arguments: Value) -> TestResult<Value> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let message = json!({ "type": 1, "invocationId": id, "target": target, "arguments": arguments });
        self.ws.send(Message::text(format!("{message}{RS}"))).await?;
        for _ in 0..100 {
            let reply = self.read().await?;
            if reply["type"] == json!(3) && reply["invocationId"] == json!(id) {
                return Ok(reply);
            }
        }
        Err("no completion".into())
    }

    async fn result(&mut self, target: &str, arguments: Value) -> TestResult<Value> {
        let completion = self.invoke(target, arguments).await?;
        if let Some(error) = completion.get("error") {
            return Err(format!("{target} failed: {error}").into());
        }
        Ok(completion.get("result").cloned().unwrap_or(Value::Null))
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_with_an_empty_body() -> TestResult {
    bounded(async {
        let node = start(hs256()).await?;
        let addr = node.local_addr();
        let other_key = encode(
            &Header::new(Algorithm::HS256),
            &json!({ NAME_IDENTIFIER_CLAIM: "mallory", "aud": AUDIENCE, "exp": now() + 300 }),
            &EncodingKey::from_secret(b"not the node's secret, not at all!!"),
        )?;
        let rs_private = std::fs::read(keys_dir().join("rs256-private.pem"))?;
        let wrong_algorithm = encode(
            &Header::new(Algorithm::RS256),
            &json!({ NAME_IDENTIFIER_CLAIM: "mallory", "aud": AUDIENCE, "exp": now() + 300 }),
            &EncodingKey::from_rsa_pem(&rs_private)?,
        )?;
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no token", None),
            ("a bad signature", Some(other_key)),
            (
                "an expired token",
                Some(hs_token(
                    json!({ NAME_IDENTIFIER_CLAIM: "a", "aud": AUDIENCE, "exp": now() - 3600 }),
                )),
            ),
            (
                "a wrong audience",
                Some(hs_token(
                    json!({ NAME_IDENTIFIER_CLAIM: "a", "aud": "elsewhere", "exp": now() + 300 }),
                )),
            ),
            (
                "no audience",
                Some(hs_token(json!({ NAME_IDENTIFIER_CLAIM: "a", "exp": now() + 300 }))),
            ),
            (
                "no expiry",
                Some(hs_token(json!({ NAME_IDENTIFIER_CLAIM: "a", "aud": AUDIENCE }))),
            ),
            ("a malformed token", Some("not.a.jwt".to_owned())),
            ("an RS256 token", Some(wrong_algorithm)),
        ];
        for (what, token) in &cases {
            let auth = token.as_deref().map(bearer);
            let headers: Vec<(&str, &str)> = auth.iter().map(|value| ("Authorization", value.as_str())).collect();
            let reply = http(addr, "POST", "/secure/negotiate?negotiateVersion=1", &headers).await?;
            assert_unauthorized(&reply, &format!("negotiate with {what} (header)"));
            if let Some(token) = token {
                let target = format!("/secure/negotiate?negotiateVersion=1&access_token={token}");
                let reply = http(addr, "POST", &target, &[]).await?;
                assert_unauthorized(&reply, &format!("negotiate with {what} (access_token)"));
            }
        }

        // Transport requests too, even with a connection token from an authorized negotiate.
        let connection = negotiate(addr, "/secure", &token_for("alice", json!({}))).await?;
        for (method, accept) in [
            ("GET", "text/event-stream"),
            ("GET", "*/*"),
            ("POST", "*/*"),
            ("DELETE", "*/*"),
        ] {
            let reply = http(addr, method, &format!("/secure?id={connection}"), &[("Accept", accept)]).await?;
            assert_unauthorized(&reply, &format!("{method} {accept} without a token"));
        }
        match tokio_tungstenite::connect_async(format!("ws://{addr}/secure?id={connection}")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "WebSocket upgrade without a token")
            }
            other => panic!("a WebSocket without a token must be refused with 401: {other:?}"),
        }

        // An anonymous hub lets the same requests through, anonymously.
        let reply = http(addr, "POST", "/open/negotiate?negotiateVersion=1", &[]).await?;
        assert_eq!(reply.status, 200);
        let mut anonymous = Client::connect(addr, "/open", Some("Bearer not.a.jwt")).await?;
        assert_eq!(anonymous.result("Whoami", json!([])).await?, Value::Null);
        anonymous.close().await;
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_from_the_header_or_access_token_names_the_user() -> TestResult {
    bounded(async {
        let node = start(hs256()).await?;
        let addr = node.local_addr();
        let token = token_for("alice", json!({ "role": ["user", "editor"], "tenant": "t1" }));

        let auth = bearer(&token);
        let reply = http(
            addr,
            "POST",
            "/secure/negotiate?negotiateVersion=1",
            &[("Authorization", &auth)],
        )
        .await?;
        assert_eq!(reply.status, 200, "negotiate with a header token: {}", reply.body);
        let reply = http(
            addr,
            "POST",
            &format!("/secure/negotiate?negotiateVersion=1&access_token={token}"),
            &[],
        )
        .await?;
        assert_eq!(reply.status, 200, "negotiate with access_token: {}", reply.body);
        // The header wins over the query.
        let reply = http(
            addr,
            "POST",
            "/secure/negotiate?negotiateVersion=1&access_token=not.a.jwt",
            &[("Authorization", &auth)],
        )
        .await?;
        assert_eq!(reply.status, 200, "the header must be preferred: {}", reply.body);

        // WebSocket with the header, after negotiate.
        let connection = negotiate(addr, "/secure", &token).await?;
        let mut by_header = Client::connect(addr, &format!("/secure?id={connection}"), Some(&auth)).await?;
        assert_eq!(by_header.result("Whoami", json!([])).await?, json!("alice"));
        assert_eq!(by_header.result("Claim", json!(["tenant"])).await?, json!("t1"));
        assert_eq!(by_header.result("Claim", json!(["role"])).await?, json!("user"));
        assert_eq!(by_header.result("Claim", json!(["missing"])).await?, Value::Null);

        // WebSocket with access_token and no negotiate (as browsers send it).
        let mut by_query = Client::connect(addr, &format!("/secure?access_token={token}"), None).await?;
        assert_eq!(by_query.result("Whoami", json!([])).await?, json!("alice"));

        // `sub` when there is no name-identifier claim.
        let sub_only = hs_token(json!({ "sub": "bob", "aud": AUDIENCE, "exp": now() + 300 }));
        let mut bob = Client::connect(addr, "/secure", Some(&bearer(&sub_only))).await?;
        assert_eq!(bob.result("Whoami", json!([])).await?, json!("bob"));

        by_header.close().await;
        by_query.close().await;
        bob.close().await;
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_user_routes_by_the_user_claim() -> TestResult {
    bounded(async {
        // A custom user claim: the email, not the name identifier.
        let node = start(hs256().user_claim("email")).await?;
        let addr = node.local_addr();
        let alice = bearer(&token_for("id-1", json!({ "email": "alice@example.com" })));
        let bob = bearer(&token_for("id-2", json!({ "email": "bob@example.com" })));
        let mut alice_1 = Client::connect(addr, "/secure", Some(&alice)).await?;
        let mut alice_2 = Client::connect(addr, "/secure", Some(&alice)).await?;
        let mut bob_1 = Client::connect(addr, "/secure", Some(&bob)).await?;
        assert_eq!(alice_1.result("Whoami", json!([])).await?, json!("alice@example.com"));

        bob_1
            .result("SendToUser", json!(["alice@example.com", "hello alice"]))
            .await?;
        for client in [&mut alice_1, &mut alice_2] {
            let message = client.read().await?;
            assert_eq!(message["type"], json!(1));
            assert_eq!(message["target"], json!("Message"));
            assert_eq!(message["arguments"], json!(["hello alice"]));
        }
        // Bob got nothing: his next message is the completion of his own call.
        let completion = bob_1.invoke("Whoami", json!([])).await?;
        assert_eq!(completion["result"], json!("bob@example.com"));

        alice_1.close().await;
        alice_2.close().await;
        bob_1.close().await;
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_and_methods_can_require_claims() -> TestResult {
    bounded(async {
        let node = start(hs256()).await?;
        let addr = node.local_addr();
        let admin = bearer(&token_for("root", json!({ "role": "admin" })));
        let user = bearer(&token_for("joe", json!({ "role": "user" })));

        // A hub-wide claim requirement: 401 anonymous, 403 without the claim, 200 with it.
        let target = "/admins/negotiate?negotiateVersion=1";
        assert_unauthorized(&http(addr, "POST", target, &[]).await?, "anonymous on /admins");
        let forbidden = http(addr, "POST", target, &[("Authorization", &user)]).await?;
        assert_eq!(forbidden.status, 403);
        assert_eq!(forbidden.body, "");
        assert_eq!(
            http(addr, "POST", target, &[("Authorization", &admin)]).await?.status,
            200
        );

        // A method requirement on an open hub: the call fails with ASP.NET's text, the connection stays.
        let mut anonymous = Client::connect(addr, "/open", None).await?;
        let completion = anonymous.invoke("Admin", json!([])).await?;
        assert_eq!(
            completion["error"],
            json!("Failed to invoke 'Admin' because user is unauthorized")
        );
        let mut joe = Client::connect(addr, "/open", Some(&user)).await?;
        let completion = joe.invoke("admin", json!([])).await?;
        assert_eq!(
            completion["error"],
            json!("Failed to invoke 'admin' because user is unauthorized")
        );
        assert_eq!(joe.result("Whoami", json!([])).await?, json!("joe"));
        let mut root = Client::connect(addr, "/open", Some(&admin)).await?;
        assert_eq!(root.result("Admin", json!([])).await?, json!("welcome, admin"));
        assert_eq!(anonymous.result("Whoami", json!([])).await?, Value::Null);

        anonymous.close().await;
        joe.close().await;
        root.close().await;
        node.stop().await;
        Ok(())
    })
    .await
}

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("auth-keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_verified_with_the_public_key() -> TestResult {
    bounded(async {
        let public = std::fs::read(keys_dir().join("rs256-public.pem"))?;
        let private = std::fs::read(keys_dir().join("rs256-private.pem"))?;
        let node = start(Authenticator::rs256_pem(&public)?.issuer("https://issuer.test")).await?;
        let addr = node.local_addr();
        let sign = |claims: Value| {
            encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(&private)?,
            )
        };

        let good = sign(json!({ "sub": "carol", "iss": "https://issuer.test", "exp": now() + 300 }))?;
        let mut carol = Client::connect(addr, "/secure", Some(&bearer(&good))).await?;
        assert_eq!(carol.result("Whoami", json!([])).await?, json!("carol"));
        carol.close().await;

        let wrong_issuer = sign(json!({ "sub": "carol", "iss": "https://other.test", "exp": now() + 300 }))?;
        let no_issuer = sign(json!({ "sub": "carol", "exp": now() + 300 }))?;
        // An HS256 token "signed" with the public key must not pass (algorithm confusion).
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &json!({ "sub": "carol", "iss": "https://issuer.test", "exp": now() + 300 }),
            &EncodingKey::from_secret(&public),
        )?;
        for (what, token) in [
            ("a wrong issuer", wrong_issuer),
            ("no issuer", no_issuer),
            ("HS256", confused),
        ] {
            let auth = bearer(&token);
            let reply = http(
                addr,
                "POST",
                "/secure/negotiate?negotiateVersion=1",
                &[("Authorization", &auth)],
            )
            .await?;
            assert_unauthorized(&reply, what);
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[test]
fn the_auth_section_configures_the_authenticator() {
    let load = |env: &[(&str, &str)]| {
        NodeConfig::load_with_env(None, env.iter().map(|(k, v)| (*k, *v)), &Overrides::new())
            .unwrap()
            .node_settings()
    };
    assert!(load(&[]).unwrap().auth.is_none());
    let settings = load(&[("HUBMESH_AUTH__SECRET", "s3cret"), ("HUBMESH_AUTH__AUDIENCE", "a")]).unwrap();
    let auth = settings.auth.expect("an authenticator");
    assert!(!format!("{auth:?}").contains("s3cret"), "the secret must not be shown");
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "u", "aud": "a", "exp": now() + 60 }),
        &EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    assert_eq!(auth.authenticate(&token).unwrap().user.as_deref(), Some("u"));

    let public = keys_dir().join("rs256-public.pem");
    let public = public.to_str().unwrap();
    let settings = load(&[("HUBMESH_AUTH__PUBLIC_KEY_FILE", public)]).unwrap();
    assert!(settings.auth.is_some());

    let both = load(&[("HUBMESH_AUTH__PUBLIC_KEY_FILE", public), ("HUBMESH_AUTH__SECRET", "x")]).unwrap_err();
    assert_eq!(both.settings()[0].key, "auth.public_key_file");
    let none = load(&[("HUBMESH_AUTH__ISSUER", "i")]).unwrap_err();
    assert_eq!(none.settings()[0].key, "auth.secret");
    let not_a_key = keys_dir().join("missing.pem");
    let missing = load(&[("HUBMESH_AUTH__PUBLIC_KEY_FILE", not_a_key.to_str().unwrap())]).unwrap_err();
    assert_eq!(missing.settings()[0].key, "auth.public_key_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_hands_out_tokens_for_the_authorized_hub() -> TestResult {
    bounded(async {
        let server = hubmesh::testing::testhub::serve("127.0.0.1:0").await?;
        let addr: SocketAddr = server.url().trim_start_matches("http://").parse()?;
        let reply = http(addr, "GET", "/generateJwtToken", &[]).await?;
        assert_eq!(reply.status, 200);
        let token = reply.body.trim().to_owned();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

        assert_unauthorized(
            &http(addr, "POST", "/authorizedhub/negotiate?negotiateVersion=1", &[]).await?,
            "/authorizedhub without a token",
        );
        let connection = negotiate(addr, "/authorizedhub", &token).await?;
        let mut client =
            Client::connect(addr, &format!("/authorizedhub?id={connection}"), Some(&bearer(&token))).await?;
        assert_eq!(client.result("Echo", json!(["hi"])).await?, json!("hi"));
        client.close().await;
        server.stop().await;
        Ok(())
    })
    .await
}
