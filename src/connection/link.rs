//! [`Link`]: the transport a connection reads and writes, whichever it is now (the one it started on, one a
//! stateful reconnect brought, or none while the client is away).

use bytes::Bytes;

use crate::transport::{CloseKind, SendMessage, Transport, TransportError};

use super::batch::Piece;
use super::reconnect::RelayTransport;

/// The transport a connection writes to: the one it started on, a reconnected one, or none while it waits for
/// the client to reconnect.
pub(super) enum Link<T> {
    Direct(T),
    Relayed(RelayTransport),
    Detached,
}

impl<T: Transport> Link<T> {
    pub(super) fn inherent_keep_alive(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.inherent_keep_alive(),
            Link::Relayed(transport) => transport.inherent_keep_alive(),
            Link::Detached => false,
        }
    }

    /// See [`Transport::recv_wakes_after_drop`]; a relay is polled every time, to be safe.
    pub(super) fn recv_wakes_after_drop(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.recv_wakes_after_drop(),
            Link::Relayed(_) | Link::Detached => false,
        }
    }

    pub(super) fn closed_by_client(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.closed_by_client(),
            Link::Relayed(transport) => transport.closed_by_client(),
            Link::Detached => true,
        }
    }

    /// Cancel-safe; pending forever while detached.
    pub(super) async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        match self {
            Link::Direct(transport) => transport.recv().await,
            Link::Relayed(transport) => transport.recv().await,
            Link::Detached => std::future::pending().await,
        }
    }

    pub(super) async fn send(
        &mut self,
        bytes: Bytes,
        format: crate::protocol::TransferFormat,
    ) -> Result<(), TransportError> {
        match self {
            Link::Direct(transport) => transport.send(bytes, format).await,
            // Boxed: a relay's send future is three times a WebSocket's, and every connection's state would pay
            // for it; only a connection that resumed after a stateful reconnect allocates it, per write.
            Link::Relayed(transport) => Box::pin(transport.send(bytes, format)).await,
            Link::Detached => Err(TransportError::Closed),
        }
    }

    /// Hands `piece` to a direct transport that takes it without waiting ([`Link::poll_flush`] then completes
    /// the write); gives it back otherwise, for [`Link::send_piece`].
    pub(super) fn try_send_now(
        &mut self,
        piece: Piece,
        format: crate::protocol::TransferFormat,
    ) -> Result<Option<Piece>, TransportError> {
        let Link::Direct(transport) = self else {
            return Ok(Some(piece));
        };
        let message = match (piece, format) {
            (Piece::Text(text), crate::protocol::TransferFormat::Text) => SendMessage::Text(text),
            (piece, format) => SendMessage::Bytes(piece.into_bytes(), format),
        };
        Ok(transport.try_send_now(message)?.map(|message| match message {
            SendMessage::Text(text) => Piece::Text(text),
            SendMessage::Bytes(bytes, _) => Piece::Bytes(bytes),
        }))
    }

    pub(super) fn poll_flush(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TransportError>> {
        match self {
            Link::Direct(transport) => transport.poll_flush(cx),
            Link::Relayed(_) | Link::Detached => std::task::Poll::Ready(Ok(())),
        }
    }

    pub(super) async fn send_piece(
        &mut self,
        piece: Piece,
        format: crate::protocol::TransferFormat,
    ) -> Result<(), TransportError> {
        match (piece, format) {
            (Piece::Text(text), crate::protocol::TransferFormat::Text) => match self {
                Link::Direct(transport) => transport.send_text(text).await,
                Link::Relayed(transport) => Box::pin(transport.send_text(text)).await,
                Link::Detached => Err(TransportError::Closed),
            },
            (piece, format) => self.send(piece.into_bytes(), format).await,
        }
    }

    pub(super) async fn close(self, kind: CloseKind) {
        match self {
            Link::Direct(transport) => transport.close(kind).await,
            Link::Relayed(transport) => transport.close(kind).await,
            Link::Detached => {}
        }
    }
}
