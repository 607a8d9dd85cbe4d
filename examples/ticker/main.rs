//! `ticker`: a backend that serves no clients pushes prices to the clients of the other nodes.
//!
//! `cargo run --example ticker` starts a cluster of three nodes (child processes of this example, with gossip and
//! links on 127.0.0.1): two front nodes serve the `ticker` hub at `/ticker` to clients, and a backend node
//! (`NodeBuilder::send_only_hub`) serves nothing over HTTP but runs the price feed, a background task that sends
//! each symbol's price to the symbol's group through the hub's `HubContext`. Connect any SignalR client to a front
//! node's `/ticker`, call `Subscribe("ACME")`, and `price(symbol, sequence, price)` arrives every half second; or
//! open a front node's URL in a browser: its page does that with the official client, served by the node.

#[path = "../common/client_bundle.rs"]
mod client_bundle;
#[path = "../common/local_cluster.rs"]
mod local_cluster;
mod prices;

use std::process::ExitCode;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use hubmesh::{CancellationToken, Node, NodeBuilder};
use local_cluster::{main_with, nothing_more, NodeSpec, Started};
use prices::{push_prices, ticker_hub};

/// How often the feed sends a round of prices.
const INTERVAL: Duration = Duration::from_millis(500);

/// Front nodes serve the hub; the backend only sends to it, and starts the feed once it serves.
fn role(builder: NodeBuilder, role: &str) -> (NodeBuilder, Started) {
    match role {
        "backend" => (builder.send_only_hub("ticker"), Box::new(start_feed)),
        _ => (builder.hub(ticker_hub()), nothing_more()),
    }
}

/// `GET /`: a page that subscribes to symbols and shows their prices as they come.
async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("index.html"))
}

/// Front nodes serve the page; the backend serves no clients.
fn routes(config: &mut web::ServiceConfig, role: &str) {
    if role != "front" {
        return;
    }
    config.route("/", web::get().to(page));
    client_bundle::mount(config);
}

/// Starts the feed on the backend; it runs as long as the node.
fn start_feed(node: &Node) {
    match node.hub_context("ticker") {
        Some(context) => {
            tokio::spawn(push_prices(context, INTERVAL, CancellationToken::new()));
        }
        None => eprintln!("ticker: the backend has no ticker context"),
    }
}

fn main() -> ExitCode {
    let nodes = [
        NodeSpec {
            name: "front-1",
            role: "front",
        },
        NodeSpec {
            name: "front-2",
            role: "front",
        },
        NodeSpec {
            name: "backend",
            role: "backend",
        },
    ];
    main_with("ticker", &nodes, role, routes)
}
