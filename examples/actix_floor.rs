//! The memory floor of the HTTP stack hubmesh is built on: a bare actix-web + actix-ws server that does the least
//! a SignalR server must do for `hubmesh bench idle` (answer the JSON handshake, complete invocations such as
//! `JoinGroup`) and nothing else: no hubs, no groups, no mailbox, no reconnect buffer.
//!
//! `cargo run --release --example actix_floor` prints `Now listening on: http://127.0.0.1:PORT`; then
//! `hubmesh bench idle --url http://127.0.0.1:PORT --pid <its pid> --clients 10000` measures what actix alone holds
//! per idle WebSocket (benches/README.md, "Memory"). Not part of hubmesh.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;

/// The reply a SignalR client needs to `record`, if any: `{}` to a handshake, a Completion to an invocation.
fn reply(record: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(record).ok()?;
    if value.get("protocol").is_some() {
        return Some("{}\u{1e}".to_owned());
    }
    let id = value.get("invocationId")?.as_str()?;
    Some(format!(
        "{{\"type\":3,\"invocationId\":{}}}\u{1e}",
        serde_json::Value::from(id)
    ))
}

async fn hub(request: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = actix_ws::handle(&request, body)?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            match message {
                actix_ws::Message::Text(text) => {
                    for answer in text.split('\u{1e}').filter_map(reply) {
                        if session.text(answer).await.is_err() {
                            return;
                        }
                    }
                }
                actix_ws::Message::Ping(bytes) if session.pong(&bytes).await.is_err() => return,
                actix_ws::Message::Close(_) => return,
                _ => {}
            }
        }
    });
    Ok(response)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let server = HttpServer::new(|| App::new().route("/hub", web::get().to(hub)))
        .workers(2)
        .bind("127.0.0.1:0")?;
    for address in server.addrs() {
        println!("Now listening on: http://{address}");
    }
    server.run().await
}
