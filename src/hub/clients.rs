//! `Clients`: who a message goes to. The proxy names are SignalR's (`All`, `AllExcept`, `Caller`, `Others`,
//! `Client`, `Clients`, `Group`, `Groups`, `GroupExcept`, `OthersInGroup`, `User`, `Users`) in snake_case.
//!
//! Every send encodes its message at most once per protocol ([`SharedFrame`]) whatever the number of
//! recipients. Sends to connections go straight to their mailboxes; sends to groups and users go through the
//! group's actor, which gives every member the group's messages in one order.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{HubContext, HubError};
use crate::connection::{ClientResultError, ConnectionId, SharedFrame};
use crate::mesh::GroupKey;
use crate::protocol::{Protocol, RawValue};

/// Sends to clients of a hub, optionally relative to a caller (SignalR's `Clients`): each method picks a set of
/// recipients, a [`ClientProxy`], whose [`ClientProxy::send`] calls a client method on all of them, on every node.
/// Get one from [`crate::Caller::clients`] (in a hub method) or [`crate::HubContext::clients`] (anywhere).
///
/// ```no_run
/// use hubmesh::{Caller, HubError};
///
/// async fn say(caller: Caller, room: String, text: String) -> Result<(), HubError> {
///     let clients = caller.clients();
///     // Arguments are owned (`'static`): they are encoded after this call returns.
///     clients.others_in_group(&room).send("Said", (caller.connection_id().to_string(), text.clone()))?;
///     clients.caller().send("Sent", (text,))
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Clients {
    context: HubContext,
    caller: Option<ConnectionId>,
}

#[derive(Clone, Debug)]
enum Target {
    All {
        except: Vec<ConnectionId>,
    },
    Connections(Vec<ConnectionId>),
    Groups {
        keys: Vec<GroupKey>,
        except: Vec<ConnectionId>,
    },
}

/// A set of recipients, chosen with [`Clients`]; [`ClientProxy::send`] delivers a client-method call to them,
/// [`ClientProxy::invoke`] asks a single connection for a result.
#[derive(Clone, Debug)]
pub struct ClientProxy {
    context: HubContext,
    target: Target,
}

impl Clients {
    pub(crate) fn new(context: HubContext, caller: Option<ConnectionId>) -> Self {
        Clients { context, caller }
    }

    fn proxy(&self, target: Target) -> ClientProxy {
        ClientProxy {
            context: self.context.clone(),
            target,
        }
    }

    fn caller_ids(&self) -> Vec<ConnectionId> {
        self.caller.iter().cloned().collect()
    }

    /// Every connection of the hub.
    pub fn all(&self) -> ClientProxy {
        self.proxy(Target::All { except: Vec::new() })
    }

    /// Every connection but these.
    pub fn all_except<I: IntoIterator<Item = ConnectionId>>(&self, excluded: I) -> ClientProxy {
        self.proxy(Target::All {
            except: excluded.into_iter().collect(),
        })
    }

    /// The calling connection (nobody, outside a hub method).
    pub fn caller(&self) -> ClientProxy {
        self.proxy(Target::Connections(self.caller_ids()))
    }

    /// Every connection but the caller.
    pub fn others(&self) -> ClientProxy {
        self.proxy(Target::All {
            except: self.caller_ids(),
        })
    }

    /// One connection.
    pub fn client(&self, id: &ConnectionId) -> ClientProxy {
        self.proxy(Target::Connections(vec![id.clone()]))
    }

    /// These connections.
    pub fn clients<I: IntoIterator<Item = ConnectionId>>(&self, ids: I) -> ClientProxy {
        self.proxy(Target::Connections(ids.into_iter().collect()))
    }

    /// The members of a group.
    pub fn group(&self, name: &str) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: vec![GroupKey::named(self.context.name(), name)],
            except: Vec::new(),
        })
    }

    /// The members of each of these groups (a connection in two of them receives the message twice, as in
    /// SignalR).
    pub fn groups<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, names: I) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: names
                .into_iter()
                .map(|name| GroupKey::named(self.context.name(), name.as_ref()))
                .collect(),
            except: Vec::new(),
        })
    }

    /// The members of a group but these connections.
    pub fn group_except<I: IntoIterator<Item = ConnectionId>>(&self, name: &str, excluded: I) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: vec![GroupKey::named(self.context.name(), name)],
            except: excluded.into_iter().collect(),
        })
    }

    /// The members of a group but the caller.
    pub fn others_in_group(&self, name: &str) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: vec![GroupKey::named(self.context.name(), name)],
            except: self.caller_ids(),
        })
    }

    /// Every connection of a user.
    pub fn user(&self, id: &str) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: vec![GroupKey::user(self.context.name(), id)],
            except: Vec::new(),
        })
    }

    /// Every connection of each of these users.
    pub fn users<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, ids: I) -> ClientProxy {
        self.proxy(Target::Groups {
            keys: ids
                .into_iter()
                .map(|id| GroupKey::user(self.context.name(), id.as_ref()))
                .collect(),
            except: Vec::new(),
        })
    }
}

impl ClientProxy {
    /// Calls client method `method` with `arguments` (a tuple, for example `("alice", 42)`, or a `Vec`) on every
    /// recipient, without waiting for them: the send is handed to the routing layer at once, so this neither
    /// blocks nor awaits. The arguments are kept (hence `'static`) and encoded on first use, at most once per
    /// protocol; a payload that cannot be encoded is logged there and not delivered. A recipient whose mailbox is
    /// full is closed as a slow consumer rather than holding the others up.
    ///
    /// ```no_run
    /// # fn example(context: hubmesh::HubContext) -> Result<(), hubmesh::HubError> {
    /// context.clients().group("lobby").send("ReceiveMessage", ("system", "welcome"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn send<A>(&self, method: &str, arguments: A) -> Result<(), HubError>
    where
        A: Serialize + Send + Sync + 'static,
    {
        let frame = SharedFrame::invocation(method, arguments);
        self.send_frame(frame);
        Ok(())
    }

    /// Delivers an already-built frame to the recipients, on every node (the crate's own senders; users call
    /// [`ClientProxy::send`]).
    pub(crate) fn send_frame(&self, frame: Arc<SharedFrame>) {
        let router = self.context.router();
        let hub = self.context.name();
        match &self.target {
            Target::All { except } => router.broadcast(hub, frame, except.clone().into()),
            Target::Connections(ids) => router.to_connections(hub, ids, frame),
            Target::Groups { keys, except } => {
                let except: Arc<[ConnectionId]> = except.clone().into();
                for key in keys {
                    router.group_send(key, frame.clone(), except.clone());
                }
            }
        }
    }

    /// Invokes client method `method` on a single connection and waits for its result (client results). Fails
    /// with `"Connection '<id>' disconnected."` if the connection ends first, and after the hub's client-result
    /// timeout.
    pub async fn invoke<T, A>(&self, method: &str, arguments: A) -> Result<T, HubError>
    where
        T: DeserializeOwned,
        A: Serialize + Send + 'static,
    {
        let Target::Connections(ids) = &self.target else {
            return Err(HubError::InvalidTarget(
                "Client results need a single connection as the target.",
            ));
        };
        let [id] = ids.as_slice() else {
            return Err(HubError::InvalidTarget(
                "Client results need a single connection as the target.",
            ));
        };
        let arguments = RawValue::encode(Protocol::MessagePack, &arguments)
            .map_err(|error| HubError::ClientResult(ClientResultError::BadResult(error.to_string())))?;
        let timeout = self.context.hub().client_result_timeout;
        let value = self
            .context
            .router()
            .invoke(self.context.name(), id, method, arguments, timeout)
            .await?;
        let decoded = match value {
            Some(raw) => raw.deserialize::<T>(),
            None => serde_json::from_str::<T>("null").map_err(|error| crate::protocol::ArgError(error.to_string())),
        };
        decoded.map_err(|error| HubError::ClientResult(ClientResultError::BadResult(error.to_string())))
    }
}
