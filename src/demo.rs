//! The demo hub that every node serves at `/hub`: the contract that load tools and examples use.
//!
//! * `JoinGroup(group)` / `LeaveGroup(group)`: invoked with an invocation id; the Completion comes once the
//!   membership is in force.
//! * `SendToGroup(group, payload)`, `SendToUser(user, payload)`, `SendToConnection(connectionId, payload)`,
//!   `Broadcast(payload)`, `Echo(payload)`: sent without an invocation id; each invokes the client method `msg`
//!   with `payload` passed through unchanged, to the group's members, to every connection of the user, to that
//!   one connection, to every connection, or to the caller only. A connection's user is the hub's
//!   ([`crate::Hub::user_id_provider`], else its token's); nobody connected, or an unknown id, receives nothing.
//!
//! Beyond that contract, for trying the rest of the hub API from a client:
//! * `Count(n)`: a server-to-client stream of the integers 1 to `n` (at most 10,000);
//! * `Sum(stream)`: adds up a client-to-server stream of numbers;
//! * `AskClient(question)`: a client result: invokes the caller's client method `ask(question)` and returns its
//!   answer (or the client's error);
//! * `GroupCount(group)`: the number of members of a group, cluster-wide;
//! * `GroupMembers(group)`: the connection ids of a group's members, cluster-wide, sorted (as the node asked sees
//!   them: `hubmesh bench churn` checks that every node lists the same);
//! * `WhoAmI()`: the caller's connection id (which names the node it is connected to).

use futures_util::StreamExt;

use crate::hub::{Caller, ClientStream, Hub, HubError, Streamed};
use crate::protocol::RawValue;
// The public re-export, as an application names it (the demo hub uses only the public API).
use crate::ConnectionId;

/// The client method the demo hub invokes.
pub const CLIENT_METHOD: &str = "msg";

async fn join_group(caller: Caller, group: String) -> Result<(), HubError> {
    caller.groups().add(caller.connection_id(), &group).await
}

async fn leave_group(caller: Caller, group: String) -> Result<(), HubError> {
    caller.groups().remove(caller.connection_id(), &group).await
}

async fn send_to_group(caller: Caller, group: String, payload: RawValue) -> Result<(), HubError> {
    caller.clients().group(&group).send(CLIENT_METHOD, (payload,))
}

async fn send_to_user(caller: Caller, user: String, payload: RawValue) -> Result<(), HubError> {
    caller.clients().user(&user).send(CLIENT_METHOD, (payload,))
}

async fn send_to_connection(caller: Caller, connection_id: ConnectionId, payload: RawValue) -> Result<(), HubError> {
    caller.clients().client(&connection_id).send(CLIENT_METHOD, (payload,))
}

async fn broadcast(caller: Caller, payload: RawValue) -> Result<(), HubError> {
    caller.clients().all().send(CLIENT_METHOD, (payload,))
}

async fn echo(caller: Caller, payload: RawValue) -> Result<(), HubError> {
    caller.clients().caller().send(CLIENT_METHOD, (payload,))
}

/// The most items `Count` streams, so one call cannot occupy a connection for long.
const MAX_COUNT: u32 = 10_000;

async fn count(n: u32) -> Streamed {
    Streamed::new(futures_util::stream::iter(1..=n.min(MAX_COUNT)))
}

async fn sum(mut numbers: ClientStream<f64>) -> Result<f64, HubError> {
    let mut total = 0.0;
    while let Some(number) = numbers.next().await {
        total += number?;
    }
    Ok(total)
}

async fn ask_client(caller: Caller, question: String) -> Result<serde_json::Value, HubError> {
    caller.clients().caller().invoke("ask", (question,)).await
}

async fn group_count(caller: Caller, group: String) -> Result<usize, HubError> {
    caller.groups().count(&group).await
}

async fn group_members(caller: Caller, group: String) -> Result<Vec<String>, HubError> {
    let mut members: Vec<String> = caller
        .groups()
        .members(&group)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    members.sort_unstable();
    Ok(members)
}

async fn who_am_i(caller: Caller) -> String {
    caller.connection_id().to_string()
}

/// The demo hub, served at `/hub`.
pub fn demo_hub() -> Hub {
    Hub::new("demo")
        .path("/hub")
        .method("JoinGroup", join_group)
        .method("LeaveGroup", leave_group)
        .method("SendToGroup", send_to_group)
        .method("SendToUser", send_to_user)
        .method("SendToConnection", send_to_connection)
        .method("Broadcast", broadcast)
        .method("Echo", echo)
        .method("Count", count)
        .method("Sum", sum)
        .method("AskClient", ask_client)
        .method("GroupCount", group_count)
        .method("GroupMembers", group_members)
        .method("WhoAmI", who_am_i)
}
