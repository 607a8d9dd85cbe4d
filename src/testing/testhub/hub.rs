//! The test server's hubs: `TestHub` with every method the functional tests call, the objects they exchange
//! ([`CustomObject`], [`ComplexObject`]), `HubWithAuthorization`, `UncreatableHub`, and the node that serves them
//! with the demo hub.

use futures_util::stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::tokens::TestTokens;
use crate::auth::NAME_IDENTIFIER_CLAIM;
use crate::connection::Limits;
use crate::demo::demo_hub;
use crate::hub::{Caller, ClientStream, Hub, HubError, Streamed};
use crate::node::{Node, NodeBuilder, NodeError};
use crate::protocol::{Binary, Timestamp};
use crate::transport::TransportKind;
use crate::CancellationToken;

/// `{Name, Value}`, sent back to the caller by `SendCustomObject` with PascalCase keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomObject {
    /// Any text.
    pub name: String,
    /// Any number.
    pub value: serde_json::Number,
}

/// The structure `EchoComplexObject` round-trips (docs/protocol.md#value-types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComplexObject {
    /// Base64 in JSON, `bin` in MessagePack.
    pub byte_array: Binary,
    /// ISO-8601 UTC in JSON, the timestamp extension in MessagePack.
    pub date_time: Timestamp,
    /// A GUID as text.
    pub guid: String,
    /// Integers.
    pub int_array: Vec<i64>,
    /// Text.
    pub string: String,
}

async fn echo(message: String) -> String {
    message
}

async fn get_caller_connection_id(caller: Caller) -> String {
    caller.connection_id().to_string()
}

async fn get_num_redirects(caller: Caller) -> i64 {
    caller
        .query_param("numRedirects")
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

async fn throw_exception(message: String) -> Result<(), HubError> {
    Err(HubError::exception("InvalidOperationException", message))
}

async fn invoke_with_string(caller: Caller, message: String) -> Result<(), HubError> {
    caller.clients().caller().send("Message", (message,))
}

async fn send_custom_object(caller: Caller, object: CustomObject) -> Result<(), HubError> {
    caller.clients().caller().send("CustomObject", (object,))
}

async fn stream_abc() -> Streamed {
    Streamed::new(stream::iter(["a", "b", "c"]))
}

/// Never yields; when the client cancels, tells it so through the hub context, as the upstream hub does.
async fn infinite_stream(caller: Caller, cancel: CancellationToken) -> Streamed {
    let context = caller.context().clone();
    let id = caller.connection_id().clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        // The connection may be gone already (a disconnect also cancels); then there is no one to tell.
        let _ = context.clients().client(&id).send("StreamCanceled", ());
    });
    Streamed::new(stream::pending::<String>())
}

async fn streaming_concat(mut items: ClientStream<String>) -> Result<String, HubError> {
    let mut joined = String::new();
    while let Some(item) = items.next().await {
        joined.push_str(&item?);
    }
    Ok(joined)
}

async fn empty_stream() -> Streamed {
    Streamed::new(stream::empty::<i32>())
}

async fn stream_throw_exception(message: String) -> Result<Streamed, HubError> {
    Err(HubError::exception("InvalidOperationException", message))
}

async fn get_active_transport_name(caller: Caller) -> &'static str {
    caller.transport().name()
}

async fn echo_complex_object(object: ComplexObject) -> ComplexObject {
    object
}

async fn send_complex_object() -> ComplexObject {
    ComplexObject {
        byte_array: Binary(vec![1, 2, 3]),
        date_time: Timestamp::from_unix(946_684_800, 0),
        guid: "00010203-0405-0607-0706-050403020100".into(),
        int_array: vec![1, 2, 3],
        string: "hello world".into(),
    }
}

async fn get_content_type_header(caller: Caller) -> Option<String> {
    caller.header("content-type").map(str::to_owned)
}

async fn get_header(caller: Caller, name: String) -> Option<String> {
    caller.header(&name).map(str::to_owned)
}

async fn get_cookie(caller: Caller, name: String) -> Option<String> {
    caller.cookie(&name).map(str::to_owned)
}

/// The TestHub with every method the functional tests call, named `name`, at `path`, offering `transports`.
pub fn test_hub(name: &str, path: &str, transports: &[TransportKind]) -> Hub {
    Hub::new(name)
        .path(path)
        .transports(transports)
        .detailed_errors(true)
        .method("Echo", echo)
        .method("GetCallerConnectionId", get_caller_connection_id)
        .method("GetNumRedirects", get_num_redirects)
        .method("ThrowException", throw_exception)
        .method("InvokeWithString", invoke_with_string)
        .method("SendCustomObject", send_custom_object)
        .method("Stream", stream_abc)
        .method("InfiniteStream", infinite_stream)
        .method("StreamingConcat", streaming_concat)
        .method("EmptyStream", empty_stream)
        .method("StreamThrowException", stream_throw_exception)
        .method("GetActiveTransportName", get_active_transport_name)
        .method("EchoComplexObject", echo_complex_object)
        .method("SendComplexObject", send_complex_object)
        .method("GetContentTypeHeader", get_content_type_header)
        .method("GetHeader", get_header)
        .method("GetCookie", get_cookie)
}

/// The name-identifier claim of the caller's token, `""` without one.
async fn get_user_name_identifier(caller: Caller) -> String {
    caller
        .claims()
        .and_then(|claims| claims.value(NAME_IDENTIFIER_CLAIM))
        .unwrap_or_default()
        .to_owned()
}

/// The first value of claim `name` of the caller's token as text (a number as its digits), `""` without one.
async fn get_user_claim(caller: Caller, name: String) -> String {
    let Some(claims) = caller.claims() else {
        return String::new();
    };
    if let Some(text) = claims.value(&name) {
        return text.to_owned();
    }
    match claims.get(&name) {
        Some(serde_json::Value::Number(number)) => number.to_string(),
        Some(serde_json::Value::Bool(flag)) => flag.to_string(),
        _ => String::new(),
    }
}

/// HubWithAuthorization at `/authorizedhub`, for authenticated callers only: `Echo(string)`,
/// `GetUserNameIdentifier()` and `GetUserClaim(type)` (`""` when the claim is missing).
pub fn authorized_hub() -> Hub {
    Hub::new("HubWithAuthorization")
        .path("/authorizedhub")
        .detailed_errors(true)
        .authorize()
        .method("Echo", echo)
        .method("GetUserNameIdentifier", get_user_name_identifier)
        .method("GetUserClaim", get_user_claim)
}

/// Fails every connection once it is made, with the error ASP.NET gives for upstream's `UncreatableHub` (a hub
/// whose constructor needs a service nobody registered): the hub cannot be created for `OnConnectedAsync`.
async fn refuse_creation(_caller: Caller) -> Result<(), HubError> {
    Err(HubError::exception(
        "InvalidOperationException",
        "Unable to resolve service for type 'System.Object' while attempting to activate \
         'FunctionalTests.UncreatableHub'.",
    ))
}

/// UncreatableHub at `/uncreatable`: negotiate and the handshake succeed, then the connection closes with an error.
pub fn uncreatable_hub() -> Hub {
    Hub::new("UncreatableHub")
        .path("/uncreatable")
        .detailed_errors(true)
        .on_connected(refuse_creation)
}

/// The test server's node: `/testhub`, `/testhub-nowebsockets`, `/uncreatable`, `/authorizedhub` (tokens of
/// `tokens`) and the demo hub at `/hub`.
pub fn test_node(tokens: &TestTokens) -> Result<Node, NodeError> {
    test_node_builder(tokens).build()
}

/// The test server's node, described but not built (named `testhub`; a cluster's nodes are renamed).
pub fn test_node_builder(tokens: &TestTokens) -> NodeBuilder {
    Node::builder()
        .name("testhub")
        // The official suite negotiates far faster than any one client should, all from one address.
        .limits(Limits {
            negotiates_per_second: 0,
            ..Limits::default()
        })
        .auth(tokens.authenticator())
        .hub(authorized_hub())
        .hub(uncreatable_hub())
        .hub(test_hub(
            "TestHub",
            "/testhub",
            &[
                TransportKind::WebSockets,
                TransportKind::ServerSentEvents,
                TransportKind::LongPolling,
            ],
        ))
        .hub(test_hub(
            "TestHubNoWebSockets",
            "/testhub-nowebsockets",
            &[TransportKind::ServerSentEvents, TransportKind::LongPolling],
        ))
        .hub(demo_hub())
}
