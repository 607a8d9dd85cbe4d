//! `chat`: rooms over a three-node cluster, with a page served by the nodes themselves.
//!
//! `cargo run --example chat` starts three nodes (child processes of this example forming one cluster over
//! gossip and links on 127.0.0.1) and prints their URLs: open two of them in a browser, pick the same room and
//! chat. Each page connects to the node that served it, and a room is a group: a message sent on one node reaches
//! the room's members on every node.
//!
//! The page loads the official browser build of `@microsoft/signalr` from the node (`/lib/signalr.js`, see
//! `examples/common/client_bundle.rs`: `npm ci` in `tests/node` installs it).

#[path = "../common/client_bundle.rs"]
mod client_bundle;
#[path = "../common/local_cluster.rs"]
mod local_cluster;

use std::process::ExitCode;

use actix_web::{web, HttpResponse};
use hubmesh::{Caller, Hub, HubError, NodeBuilder};
use local_cluster::{main_with, nothing_more, NodeSpec, Started};

/// The client method every message of a room arrives with: `(room, user, text)`.
const MESSAGE: &str = "message";

/// The longest room name, user name and message the hub accepts.
const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 2000;

fn check_length(what: &str, value: &str, max: usize) -> Result<(), HubError> {
    if value.trim().is_empty() || value.chars().count() > max {
        return Err(HubError::hub(format!("{what} must be 1 to {max} characters")));
    }
    Ok(())
}

/// `Join(room, user)`: the caller joins the room; its members are told.
async fn join(caller: Caller, room: String, user: String) -> Result<(), HubError> {
    check_length("room", &room, MAX_NAME)?;
    check_length("user", &user, MAX_NAME)?;
    caller.groups().add(caller.connection_id(), &room).await?;
    caller
        .clients()
        .group(&room)
        .send(MESSAGE, (room.clone(), "", format!("{user} joined")))
}

/// `Leave(room, user)`: the caller leaves the room; the members left are told.
async fn leave(caller: Caller, room: String, user: String) -> Result<(), HubError> {
    check_length("room", &room, MAX_NAME)?;
    check_length("user", &user, MAX_NAME)?;
    caller.groups().remove(caller.connection_id(), &room).await?;
    caller
        .clients()
        .group(&room)
        .send(MESSAGE, (room.clone(), "", format!("{user} left")))
}

/// `Send(room, user, text)`: a message to everyone in the room, on every node.
async fn send(caller: Caller, room: String, user: String, text: String) -> Result<(), HubError> {
    check_length("room", &room, MAX_NAME)?;
    check_length("user", &user, MAX_NAME)?;
    check_length("message", &text, MAX_TEXT)?;
    caller.clients().group(&room).send(MESSAGE, (room.clone(), user, text))
}

/// The chat hub, at `/chat`.
pub fn chat_hub() -> Hub {
    Hub::new("chat")
        .path("/chat")
        .method("Join", join)
        .method("Leave", leave)
        .method("Send", send)
}

/// `GET /`: the chat page.
async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("index.html"))
}

fn routes(config: &mut web::ServiceConfig, _role: &str) {
    config.route("/", web::get().to(page));
    client_bundle::mount(config);
}

fn role(builder: NodeBuilder, _role: &str) -> (NodeBuilder, Started) {
    (builder.hub(chat_hub()), nothing_more())
}

fn main() -> ExitCode {
    let nodes = [
        NodeSpec {
            name: "chat-1",
            role: "chat",
        },
        NodeSpec {
            name: "chat-2",
            role: "chat",
        },
        NodeSpec {
            name: "chat-3",
            role: "chat",
        },
    ];
    main_with("chat", &nodes, role, routes)
}
