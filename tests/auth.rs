//! Authentication and authorization over the wire (docs/protocol.md#authentication): a real node on `127.0.0.1:0`, raw
//! HTTP requests and the raw test client (`hubmesh::testing::client`) speaking JSON.
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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubmesh::auth::{Authenticator, Requirement, NAME_IDENTIFIER_CLAIM};
use hubmesh::testing::client::{http_request, negotiate, ClientOptions, HttpReply, TestClient};
use hubmesh::{Caller, Hub, HubError, Node, NodeHandle};
use hubmesh_cli::config::{NodeConfig, Overrides};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::time::timeout;

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
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

/// Runs `body` against a node that authenticates with `authenticator`, at its address, under [`TEST_TIMEOUT`];
/// stops the node after it.
async fn on_node<F, Fut>(authenticator: Authenticator, body: F) -> TestResult
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = TestResult>,
{
    bounded(async {
        let node = start(authenticator).await?;
        body(node.local_addr()).await?;
        node.stop().await;
        Ok(())
    })
    .await
}

async fn bounded<F: Future<Output = TestResult>>(body: F) -> TestResult {
    timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| format!("the test did not finish within {} s", TEST_TIMEOUT.as_secs()))?
}

// ---------------------------------------------------------------------------------------------------------------
// Requests and clients
// ---------------------------------------------------------------------------------------------------------------

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A client of the hub at `path` on the node at `addr`.
fn hub(addr: SocketAddr, path: &str) -> ClientOptions {
    TestClient::to(&format!("ws://{addr}{path}"))
}

/// Negotiates with `token` in the `Authorization` header; the connection token.
async fn connection_token(addr: SocketAddr, path: &str, token: &str) -> TestResult<String> {
    let auth = bearer(token);
    let body = negotiate(&format!("http://{addr}{path}"), "", &[("Authorization", &auth)]).await?;
    Ok(body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned())
}

/// `POST <path>/negotiate?negotiateVersion=1<extra_query>`, with `authorization` as the `Authorization` header.
async fn post_negotiate(
    addr: SocketAddr,
    path: &str,
    extra_query: &str,
    authorization: Option<&str>,
) -> TestResult<HttpReply> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    let target = format!("{path}/negotiate?negotiateVersion=1{extra_query}");
    Ok(http_request(addr, "POST", &target, &headers).await?)
}

/// Asserts a 401 with an empty body (docs/protocol.md#error-bodies) and a Bearer challenge.
fn assert_unauthorized(reply: &HttpReply, what: &str) {
    assert_eq!(
        reply.status,
        401,
        "{what}: expected 401, got {} {}",
        reply.status,
        reply.text()
    );
    assert_eq!(reply.text(), "", "{what}: a 401 must have an empty body");
    assert!(
        reply
            .header("www-authenticate")
            .is_some_and(|value| value.starts_with("Bearer")),
        "{what}: WWW-Authenticate {:?}",
        reply.header("www-authenticate")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_with_an_empty_body() -> TestResult {
    on_node(hs256(), |addr| async move {
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
            let reply = post_negotiate(addr, "/secure", "", auth.as_deref()).await?;
            assert_unauthorized(&reply, &format!("negotiate with {what} (header)"));
            if let Some(token) = token {
                let reply = post_negotiate(addr, "/secure", &format!("&access_token={token}"), None).await?;
                assert_unauthorized(&reply, &format!("negotiate with {what} (access_token)"));
            }
        }

        // Transport requests too, even with a connection token from an authorized negotiate.
        let connection = connection_token(addr, "/secure", &token_for("alice", json!({}))).await?;
        for (method, accept) in [
            ("GET", "text/event-stream"),
            ("GET", "*/*"),
            ("POST", "*/*"),
            ("DELETE", "*/*"),
        ] {
            let reply = http_request(addr, method, &format!("/secure?id={connection}"), &[("Accept", accept)]).await?;
            assert_unauthorized(&reply, &format!("{method} {accept} without a token"));
        }
        let upgrade = hub(addr, &format!("/secure?id={connection}")).refused_status().await?;
        assert_eq!(upgrade, 401, "WebSocket upgrade without a token");

        // An anonymous hub lets the same requests through, anonymously.
        let reply = post_negotiate(addr, "/open", "", None).await?;
        assert_eq!(reply.status, 200);
        let mut anonymous = hub(addr, "/open").authorization("Bearer not.a.jwt").connect().await?;
        assert_eq!(anonymous.invoke_ok("Whoami", json!([])).await?, Value::Null);
        anonymous.close_socket().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_from_the_header_or_access_token_names_the_user() -> TestResult {
    on_node(hs256(), |addr| async move {
        let token = token_for("alice", json!({ "role": ["user", "editor"], "tenant": "t1" }));

        let auth = bearer(&token);
        let reply = post_negotiate(addr, "/secure", "", Some(&auth)).await?;
        assert_eq!(reply.status, 200, "negotiate with a header token: {}", reply.text());
        let reply = post_negotiate(addr, "/secure", &format!("&access_token={token}"), None).await?;
        assert_eq!(reply.status, 200, "negotiate with access_token: {}", reply.text());
        // The header wins over the query.
        let reply = post_negotiate(addr, "/secure", "&access_token=not.a.jwt", Some(&auth)).await?;
        assert_eq!(reply.status, 200, "the header must be preferred: {}", reply.text());

        // WebSocket with the header, after negotiate.
        let mut by_header = hub(addr, "/secure").bearer(&token).negotiate().await?.connect().await?;
        assert_eq!(by_header.invoke_ok("Whoami", json!([])).await?, json!("alice"));
        assert_eq!(by_header.invoke_ok("Claim", json!(["tenant"])).await?, json!("t1"));
        assert_eq!(by_header.invoke_ok("Claim", json!(["role"])).await?, json!("user"));
        assert_eq!(by_header.invoke_ok("Claim", json!(["missing"])).await?, Value::Null);

        // WebSocket with access_token and no negotiate (as browsers send it).
        let mut by_query = hub(addr, "/secure").access_token(&token).connect().await?;
        assert_eq!(by_query.invoke_ok("Whoami", json!([])).await?, json!("alice"));

        // `sub` when there is no name-identifier claim.
        let sub_only = hs_token(json!({ "sub": "bob", "aud": AUDIENCE, "exp": now() + 300 }));
        let mut bob = hub(addr, "/secure").bearer(&sub_only).connect().await?;
        assert_eq!(bob.invoke_ok("Whoami", json!([])).await?, json!("bob"));

        by_header.close_socket().await;
        by_query.close_socket().await;
        bob.close_socket().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_user_routes_by_the_user_claim() -> TestResult {
    // A custom user claim: the email, not the name identifier.
    on_node(hs256().user_claim("email"), |addr| async move {
        let alice = bearer(&token_for("id-1", json!({ "email": "alice@example.com" })));
        let bob = bearer(&token_for("id-2", json!({ "email": "bob@example.com" })));
        let mut alice_1 = hub(addr, "/secure").authorization(&alice).connect().await?;
        let mut alice_2 = hub(addr, "/secure").authorization(&alice).connect().await?;
        let mut bob_1 = hub(addr, "/secure").authorization(&bob).connect().await?;
        assert_eq!(
            alice_1.invoke_ok("Whoami", json!([])).await?,
            json!("alice@example.com")
        );

        bob_1
            .invoke_ok("SendToUser", json!(["alice@example.com", "hello alice"]))
            .await?;
        for client in [&mut alice_1, &mut alice_2] {
            let message = client.record().await?.value;
            assert_eq!(message["type"], json!(1));
            assert_eq!(message["target"], json!("Message"));
            assert_eq!(message["arguments"], json!(["hello alice"]));
        }
        // Bob got nothing: his next message is the completion of his own call.
        let completion = bob_1.invoke("Whoami", json!([])).await?;
        assert_eq!(completion["result"], json!("bob@example.com"));

        alice_1.close_socket().await;
        alice_2.close_socket().await;
        bob_1.close_socket().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_and_methods_can_require_claims() -> TestResult {
    on_node(hs256(), |addr| async move {
        let admin = bearer(&token_for("root", json!({ "role": "admin" })));
        let user = bearer(&token_for("joe", json!({ "role": "user" })));

        // A hub-wide claim requirement: 401 anonymous, 403 without the claim, 200 with it.
        let anonymous = post_negotiate(addr, "/admins", "", None).await?;
        assert_unauthorized(&anonymous, "anonymous on /admins");
        let forbidden = post_negotiate(addr, "/admins", "", Some(&user)).await?;
        assert_eq!(forbidden.status, 403);
        assert_eq!(forbidden.text(), "");
        let admitted = post_negotiate(addr, "/admins", "", Some(&admin)).await?;
        assert_eq!(admitted.status, 200);

        // A method requirement on an open hub: the call fails with ASP.NET's text, the connection stays.
        let mut anonymous = hub(addr, "/open").connect().await?;
        let completion = anonymous.invoke("Admin", json!([])).await?;
        assert_eq!(
            completion["error"],
            json!("Failed to invoke 'Admin' because user is unauthorized")
        );
        let mut joe = hub(addr, "/open").authorization(&user).connect().await?;
        let completion = joe.invoke("admin", json!([])).await?;
        assert_eq!(
            completion["error"],
            json!("Failed to invoke 'admin' because user is unauthorized")
        );
        assert_eq!(joe.invoke_ok("Whoami", json!([])).await?, json!("joe"));
        let mut root = hub(addr, "/open").authorization(&admin).connect().await?;
        assert_eq!(root.invoke_ok("Admin", json!([])).await?, json!("welcome, admin"));
        assert_eq!(anonymous.invoke_ok("Whoami", json!([])).await?, Value::Null);

        anonymous.close_socket().await;
        joe.close_socket().await;
        root.close_socket().await;
        Ok(())
    })
    .await
}

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("auth-keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_verified_with_the_public_key() -> TestResult {
    let public = std::fs::read(keys_dir().join("rs256-public.pem"))?;
    let private = std::fs::read(keys_dir().join("rs256-private.pem"))?;
    let authenticator = Authenticator::rs256_pem(&public)?.issuer("https://issuer.test");
    on_node(authenticator, |addr| async move {
        let sign = |claims: Value| {
            encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(&private)?,
            )
        };

        let good = sign(json!({ "sub": "carol", "iss": "https://issuer.test", "exp": now() + 300 }))?;
        let mut carol = hub(addr, "/secure").bearer(&good).connect().await?;
        assert_eq!(carol.invoke_ok("Whoami", json!([])).await?, json!("carol"));
        carol.close_socket().await;

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
            let reply = post_negotiate(addr, "/secure", "", Some(&auth)).await?;
            assert_unauthorized(&reply, what);
        }
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
        let reply = http_request(addr, "GET", "/generateJwtToken", &[]).await?;
        assert_eq!(reply.status, 200);
        let token = reply.text().trim().to_owned();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

        assert_unauthorized(
            &post_negotiate(addr, "/authorizedhub", "", None).await?,
            "/authorizedhub without a token",
        );
        let mut client = hub(addr, "/authorizedhub")
            .bearer(&token)
            .negotiate()
            .await?
            .connect()
            .await?;
        assert_eq!(client.invoke_ok("Echo", json!(["hi"])).await?, json!("hi"));
        client.close_socket().await;
        server.stop().await;
        Ok(())
    })
    .await
}
