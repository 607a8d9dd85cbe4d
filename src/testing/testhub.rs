//! The server the official SignalR functional tests run against (`SignalR.Client.FunctionalTestApp` upstream, its
//! `Startup.cs`), rebuilt on hubmesh to answer every request as upstream's does: the hubs and routes listed in
//! docs/protocol.md#test-server-routes (docs/protocol.md#official-functional-test-app has the scenarios).
//!
//! Served by `cargo run --example testhub` and by [`super::TestHubServer`] in tests. `/authorizedhub` requires a
//! bearer token, which `GET /generateJwtToken` hands out: HS256 with a key random for each server ([`TestTokens`]),
//! user `testuser`, valid for 5 s (plus the authenticator's leeway). The raw `/echo` endpoint (no hub protocol,
//! every chunk echoed back) speaks WebSockets, Server-Sent Events and long polling through the transport modules;
//! `/echoredirect…` redirects to it with a 307; `/bad-negotiate…` answers 400. The official client's bundles are
//! served under `/lib/signalr/` and `/lib/signalr-webworker/` from the installed npm packages.
//!
//! `hub` holds the hubs and the node, `tokens` the JWT key, `routes` the plain HTTP routes and upstream's
//! middleware, `echo` the raw `/echo` connection, `bundles` the client bundles, and `server` puts them together on
//! HTTP and HTTPS listeners; `cluster` starts several of them as one cluster.

mod bundles;
mod cluster;
mod echo;
mod hub;
mod routes;
mod server;
mod tokens;

pub use bundles::NODE_MODULES_ENV;
pub use cluster::serve_cluster;
pub use hub::{authorized_hub, test_hub, test_node, test_node_builder, uncreatable_hub, ComplexObject, CustomObject};
pub use server::{serve, serve_on, Listen, TestHubError, TestHubHandle};
pub use tokens::{TestTokens, TEST_TOKEN_AUDIENCE, TEST_TOKEN_ISSUER, TEST_TOKEN_LIFETIME, TEST_USER};
