//! The first phase of a connection: reading the client's handshake within its timeout, answering it, and
//! building the [`Connection`] that serves the rest (registered with its host before the answer goes out).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::time::{sleep_until, Instant};

use crate::protocol::handshake::{self, HandshakeRequest};
use crate::protocol::Protocol;
use crate::transport::{CloseKind, Transport, TransportKind};

use super::link::Link;
use super::mailbox::Mailbox;
use super::reconnect::{ReceiveState, ReplayBuffer};
use super::stateful::Stateful;
use super::task::{Accepted, Connection, ConnectionSetup};
use super::{ConnectionHandle, Limits, Session};

impl<T: Transport> Connection<T> {
    /// Reads the handshake and answers it; `None` if the connection ended there.
    pub(super) async fn handshake(mut transport: T, setup: ConnectionSetup) -> Option<Accepted<T>> {
        let limits = setup.limits;
        let mut inbound = BytesMut::new();
        let request = match read_handshake(&mut transport, &mut inbound, &limits).await {
            Ok(request) => request,
            Err(HandshakeFailure::Reply(error)) => {
                tracing::debug!(%error, "handshake refused");
                let mut out = Vec::new();
                handshake::write_response(Some(&error), &mut out);
                let _ = transport
                    .send(Bytes::from(out), crate::protocol::TransferFormat::Text)
                    .await;
                transport.close(CloseKind::Normal).await;
                return None;
            }
            Err(HandshakeFailure::Gone(reason)) => {
                tracing::debug!(%reason, "no handshake");
                transport.close(CloseKind::Normal).await;
                return None;
            }
        };
        let Some(protocol) = Protocol::from_name(&request.protocol) else {
            // read_handshake only returns known protocols.
            return None;
        };
        let mailbox = Arc::new(Mailbox::new(limits.outbound_queue));
        let handle = ConnectionHandle {
            id: setup.id.clone(),
            mailbox: mailbox.clone(),
            relay: setup.wake_relay,
        };
        let session = Arc::new(Session {
            id: setup.id,
            user: setup.request.user,
            claims: setup.request.claims,
            transport: transport.kind(),
            protocol,
            query: setup.request.query,
            headers: setup.request.headers,
            handle,
        });
        let stateful = match setup.resume {
            Some(slot) if request.version >= 2 && !limits.reconnect_window.is_zero() => Some(Box::new(Stateful {
                sent: ReplayBuffer::new(limits.reconnect_buffer_bytes),
                received: ReceiveState::new(),
                slot,
                detached_until: None,
                ack_due: None,
                moving: None,
                keeper: setup.keeper.clone(),
                written: 0,
                groups_got: Default::default(),
            })),
            _ => None,
        };
        if let Some(keeper) = stateful.as_ref().and_then(|stateful| stateful.keeper.as_ref()) {
            keeper.opened(protocol);
            mailbox.set_keeper(keeper.clone());
        }
        let mut connection = Connection::connected(
            Link::Direct(transport),
            stateful,
            protocol,
            limits,
            setup.host,
            session,
            mailbox,
            inbound,
        );
        // Registered before the response goes out: a client that has it may at once have the server address this
        // connection (a hub method another client calls, an HTTP request of its own), and must not find it missing.
        // What the hub sends meanwhile waits in the mailbox, which is read after the response is written.
        let mut connected = connection.host.connected(&connection.session);
        // Done before the response too, for the same reason: a user's connection must be in its user's group
        // cluster-wide once its client has the response, or a send to the user at once could miss it.
        if let Some(admit) = connection.host.admit(&connection.session) {
            if let Err(error) = admit.await {
                tracing::debug!(%error, "not admitted");
                // Queued before anything else the main loop reads, so it is the first thing after the response.
                connection.session.handle.close(Some(error), true);
                connected = Box::pin(async { Ok(()) });
            }
        }
        connection.limits.counters.connected(connection.session.transport, protocol);
        let mut response = Vec::new();
        handshake::write_response(None, &mut response);
        match connection.write(Bytes::from(response)).await {
            // The main loop finds the transport gone and ends the connection the usual way (so `disconnected`
            // follows `connected`, as for any connection).
            Err(error) => tracing::debug!(%error, "handshake response not delivered"),
            Ok(()) => tracing::debug!(protocol = protocol.name(), "connected"),
        }
        Some((Box::new(connection), connected))
    }
}

enum HandshakeFailure {
    /// Answer with a handshake error, then close.
    Reply(String),
    /// Close without an answer.
    Gone(String),
}

async fn read_handshake<T: Transport>(
    transport: &mut T,
    inbound: &mut BytesMut,
    limits: &Limits,
) -> Result<HandshakeRequest, HandshakeFailure> {
    let deadline = Instant::now() + limits.handshake_timeout;
    loop {
        match handshake::parse_request(inbound, limits.max_message) {
            Ok(Some(request)) => {
                let protocol = request
                    .validate()
                    .map_err(|error| HandshakeFailure::Reply(error.to_string()))?;
                if protocol.transfer_format() == crate::protocol::TransferFormat::Binary
                    && transport.kind() == TransportKind::ServerSentEvents
                {
                    return Err(HandshakeFailure::Reply(format!(
                        "Cannot use the '{}' protocol on the current transport. The transport does not support 'Binary' transfer format.",
                        request.protocol
                    )));
                }
                return Ok(request);
            }
            Ok(None) => {}
            Err(error) => return Err(HandshakeFailure::Reply(error.to_string())),
        }
        let chunk = tokio::select! {
            chunk = transport.recv() => chunk,
            () = sleep_until(deadline) => return Err(HandshakeFailure::Gone("handshake timed out".into())),
        };
        match chunk {
            Some(Ok(bytes)) => inbound.extend_from_slice(&bytes),
            Some(Err(error)) => return Err(HandshakeFailure::Gone(error.to_string())),
            None => return Err(HandshakeFailure::Gone("the client left before the handshake".into())),
        }
    }
}
