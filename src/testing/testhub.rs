//! The server the official SignalR functional tests run against (`SignalR.Client.FunctionalTestApp` upstream),
//! rebuilt on hubmesh: the `TestHub` and the routes listed in docs/protocol.md#test-server-routes
//! (docs/protocol.md#official-functional-test-app has the scenarios).
//!
//! Served by `cargo run --example testhub` and by [`super::TestHubServer`] in tests. `/authorizedhub` requires a
//! bearer token, which `GET /generateJwtToken` hands out: HS256 with a key random for each server ([`TestTokens`]),
//! user `testuser`, valid for 5 s (plus the authenticator's leeway). The raw `/echo` endpoint (no hub protocol,
//! every chunk echoed back) speaks WebSockets, Server-Sent Events and long polling through the transport modules;
//! `/bad-negotiate` answers negotiate with an error.
//!
//! `hub` holds the hubs and the node, `tokens` the JWT key, `routes` the plain HTTP routes besides the hubs, `echo`
//! the raw `/echo` connection, and `server` puts them together on HTTP and HTTPS listeners.

mod echo;
mod hub;
mod routes;
mod server;
mod tokens;

pub use hub::{authorized_hub, test_hub, test_node, ComplexObject, CustomObject};
pub use server::{serve, serve_on, Listen, TestHubError, TestHubHandle};
pub use tokens::{TestTokens, TEST_TOKEN_LIFETIME, TEST_USER};
