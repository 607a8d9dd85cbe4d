//! The WebSocket transport on a socket it owns: what a node's own HTTP server hands over after the upgrade.
//!
//! Why not actix-ws here: under actix-web the HTTP/1 dispatcher keeps owning an upgraded socket, with an 8 KiB
//! read and an 8 KiB write buffer for the socket's life, and every message goes through actix-ws's session
//! channel and a second task (the dispatcher's) before it reaches the socket. Measured with
//! `examples/actix_floor.rs`, that alone is 14 KB per idle connection, three times the budget. So the node's
//! server ([`crate::node::server`]) takes the socket from actix-http's upgrade hook, and this transport reads and
//! writes it from the connection's own task: frames are parsed with actix-http's WebSocket codec, a frame is
//! written straight from the shared message bytes with one vectored `write`, and an idle connection holds no
//! buffer at all. [`super::websocket`] (actix-ws) stays for hubs mounted in an application's own actix-web
//! server, where the socket cannot be taken.
//!
//! Frames follow RFC 6455 as [`super::websocket`] does: Text for JSON and Binary for MessagePack
//! (docs/protocol.md#websocket-frame-types), Pings answered with Pongs, continuations aggregated up to the frame
//! cap, Text checked as UTF-8, a clean end with close code 1000.

use std::future::poll_fn;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Decoder, ReadBuf};
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::{CloseKind, SendMessage, Transport, TransportError, TransportKind};
use crate::protocol::TransferFormat;

/// The byte stream under a WebSocket: a TCP stream, or TLS over one.
pub trait SocketIo: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> SocketIo for T {}

/// How much one read takes from the socket. The bytes land in a buffer on the stack and only what is left of a
/// partial frame is kept, so an idle connection holds no read buffer.
const READ_CHUNK: usize = 8 * 1024;

/// How long [`Transport::close`] waits for the client's answer to its Close frame before it lets the socket go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Opcodes of the frames this side writes.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PONG: u8 = 0xA;

/// An upgraded WebSocket. Boxed, so that moving it (into the connection task) moves a pointer.
pub struct UpgradedWebSocket(Box<Inner>);

struct Inner {
    io: Box<dyn SocketIo>,
    codec: Codec,
    /// Bytes read but not yet decoded: at most a partial frame between reads, empty (and unallocated) when idle.
    read_buf: BytesMut,
    /// A message arriving in continuation frames: its format and its bytes so far.
    partial: Option<(TransferFormat, BytesMut)>,
    /// Frame bytes the socket has not taken yet; written before anything else, so that a cancelled or cut-short
    /// write never leaves half a frame on the wire.
    unsent: BytesMut,
    max_frame: usize,
    /// Whether the client sent a Close frame (rather than dropping the socket).
    close_received: bool,
    /// Whether the socket reported end of stream.
    eof: bool,
}

impl UpgradedWebSocket {
    /// Wraps an upgraded socket. `received` holds bytes read with the upgrade request that belong to the
    /// WebSocket; messages (after aggregation) over `max_frame` bytes end the connection.
    pub fn new(io: Box<dyn SocketIo>, received: &[u8], max_frame: usize) -> Self {
        UpgradedWebSocket(Box::new(Inner {
            io,
            codec: Codec::new().max_size(max_frame),
            read_buf: BytesMut::from(received),
            partial: None,
            unsent: BytesMut::new(),
            max_frame,
            close_received: false,
            eof: false,
        }))
    }

    /// The next whole message from the client and whether it came as Text or Binary; `None` once the client
    /// closed or vanished. Cancel-safe.
    pub async fn recv_message(&mut self) -> Option<Result<(Bytes, TransferFormat), TransportError>> {
        poll_fn(|cx| self.0.poll_message(cx)).await
    }
}

impl Inner {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(Bytes, TransferFormat), TransportError>>> {
        // A Pong that could not be written at once goes out as the socket takes it; its readiness wakes this task.
        if !self.unsent.is_empty() {
            if let Poll::Ready(Err(error)) = self.poll_write_unsent(cx) {
                return Poll::Ready(Some(Err(error)));
            }
        }
        loop {
            while !self.read_buf.is_empty() {
                let frame = match self.codec.decode(&mut self.read_buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(ProtocolError::Overflow) => {
                        return Poll::Ready(Some(Err(TransportError::FrameTooLarge(self.max_frame))))
                    }
                    Err(error) => return Poll::Ready(Some(Err(TransportError::Protocol(error.to_string())))),
                };
                if self.read_buf.is_empty() {
                    // Let the allocation go with the last frame taken from it.
                    self.read_buf = BytesMut::new();
                }
                match self.on_frame(frame) {
                    Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                    Ok(None) if self.close_received => return Poll::Ready(None),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Some(Err(error))),
                }
                if !self.unsent.is_empty() {
                    if let Poll::Ready(Err(error)) = self.poll_write_unsent(cx) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
            if self.eof {
                return Poll::Ready(None);
            }
            // Uninitialised: zeroing 8 KiB on every read (each message, and each read that finds nothing) cost
            // more than decoding the message.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                // A socket that broke (rather than a client that broke the protocol): the client may come back.
                Err(_) => return Poll::Ready(Some(Err(TransportError::Closed))),
                Ok(()) if buf.filled().is_empty() => {
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Ok(()) => self.read_buf.extend_from_slice(buf.filled()),
            }
        }
    }

    /// Handles one frame: a whole message, or nothing yet (a control frame, part of a continued message).
    fn on_frame(&mut self, frame: Frame) -> Result<Option<(Bytes, TransferFormat)>, TransportError> {
        match frame {
            Frame::Text(bytes) => checked(bytes, TransferFormat::Text).map(Some),
            Frame::Binary(bytes) => Ok(Some((bytes, TransferFormat::Binary))),
            Frame::Continuation(Item::FirstText(bytes)) => self.begin(TransferFormat::Text, &bytes),
            Frame::Continuation(Item::FirstBinary(bytes)) => self.begin(TransferFormat::Binary, &bytes),
            Frame::Continuation(Item::Continue(bytes)) => self.extend(&bytes).map(|()| None),
            Frame::Continuation(Item::Last(bytes)) => {
                self.extend(&bytes)?;
                match self.partial.take() {
                    Some((format, message)) => checked(message.freeze(), format).map(Some),
                    None => Err(TransportError::Protocol(
                        "a continuation frame without a first frame".into(),
                    )),
                }
            }
            Frame::Ping(payload) => {
                // A control frame carries at most 125 bytes.
                let payload = &payload[..payload.len().min(125)];
                let header = frame_header(OPCODE_PONG, payload.len());
                self.unsent.extend_from_slice(&header.bytes[..header.len]);
                self.unsent.extend_from_slice(payload);
                Ok(None)
            }
            Frame::Pong(_) => Ok(None),
            Frame::Close(_) => {
                self.close_received = true;
                Ok(None)
            }
        }
    }

    fn begin(
        &mut self,
        format: TransferFormat,
        bytes: &[u8],
    ) -> Result<Option<(Bytes, TransferFormat)>, TransportError> {
        self.partial = Some((format, BytesMut::from(bytes)));
        Ok(None)
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let Some((_, message)) = &mut self.partial else {
            return Err(TransportError::Protocol(
                "a continuation frame without a first frame".into(),
            ));
        };
        if message.len() + bytes.len() > self.max_frame {
            return Err(TransportError::FrameTooLarge(self.max_frame));
        }
        message.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes what is left of earlier frames.
    fn poll_write_unsent(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.unsent.is_empty() {
            let written =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.unsent)).map_err(|_| TransportError::Closed)?;
            if written == 0 {
                return Poll::Ready(Err(TransportError::Closed));
            }
            let _ = self.unsent.split_to(written);
        }
        self.unsent = BytesMut::new();
        ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(|_| TransportError::Closed)?;
        Poll::Ready(Ok(()))
    }

    /// Writes one frame of `payload`, then waits until the socket took all of it.
    async fn write_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), TransportError> {
        self.write_frame_now(opcode, payload)?;
        poll_fn(|cx| self.poll_write_unsent(cx)).await
    }

    /// Writes one frame of `payload` without waiting: at once, from the caller's bytes, as far as the socket takes
    /// it; the rest is copied to `unsent`, which [`Inner::poll_write_unsent`] writes. Behind earlier unsent
    /// bytes, the whole frame is copied there (the caller waited for those to drain before, so this is rare).
    fn write_frame_now(&mut self, opcode: u8, payload: &[u8]) -> Result<(), TransportError> {
        let header = frame_header(opcode, payload.len());
        let header = &header.bytes[..header.len];
        if !self.unsent.is_empty() {
            self.unsent.extend_from_slice(header);
            self.unsent.extend_from_slice(payload);
            return Ok(());
        }
        let total = header.len() + payload.len();
        let mut written = 0;
        let waker = std::task::Waker::noop();
        let mut probe = Context::from_waker(waker);
        while written < total {
            let slices = if written < header.len() {
                [IoSlice::new(&header[written..]), IoSlice::new(payload)]
            } else {
                [IoSlice::new(&payload[written - header.len()..]), IoSlice::new(&[])]
            };
            // Polled with a no-op waker: a socket that is not ready now is waited on below, through `unsent`,
            // with the task's own waker.
            match Pin::new(&mut self.io).poll_write_vectored(&mut probe, &slices) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(TransportError::Closed),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        if written < header.len() {
            self.unsent.extend_from_slice(&header[written..]);
            self.unsent.extend_from_slice(payload);
        } else if written < total {
            self.unsent.extend_from_slice(&payload[written - header.len()..]);
        }
        Ok(())
    }
}

/// `bytes` as a message of `format`, if a Text message is UTF-8 (RFC 6455 section 8.1).
fn checked(bytes: Bytes, format: TransferFormat) -> Result<(Bytes, TransferFormat), TransportError> {
    if format == TransferFormat::Text && std::str::from_utf8(&bytes).is_err() {
        return Err(TransportError::Protocol("a text frame was not UTF-8".into()));
    }
    Ok((bytes, format))
}

/// The opcode of a data frame in `format`; Text must be UTF-8 (RFC 6455 section 8.1).
fn opcode(format: TransferFormat, bytes: &[u8]) -> Result<u8, TransportError> {
    match format {
        TransferFormat::Text if std::str::from_utf8(bytes).is_err() => {
            Err(TransportError::Protocol("a text frame was not UTF-8".into()))
        }
        TransferFormat::Text => Ok(OPCODE_TEXT),
        TransferFormat::Binary => Ok(OPCODE_BINARY),
    }
}

/// The header of an unmasked final frame (the server side never masks).
struct FrameHeader {
    bytes: [u8; 10],
    len: usize,
}

fn frame_header(opcode: u8, payload_len: usize) -> FrameHeader {
    let mut bytes = [0u8; 10];
    bytes[0] = 0x80 | opcode;
    let len = if payload_len < 126 {
        bytes[1] = payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    FrameHeader { bytes, len }
}

impl Transport for UpgradedWebSocket {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSockets
    }

    fn closed_by_client(&self) -> bool {
        self.0.close_received
    }

    fn recv_wakes_after_drop(&self) -> bool {
        // A socket's read readiness keeps the last waker it was given until it wakes it.
        true
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        Some(self.recv_message().await?.map(|(bytes, _)| bytes))
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        self.0.write_frame(opcode(format, &bytes)?, &bytes).await
    }

    async fn send_text(&mut self, text: ByteString) -> Result<(), TransportError> {
        self.0.write_frame(OPCODE_TEXT, text.as_bytes()).await
    }

    fn try_send_now(&mut self, message: SendMessage) -> Result<Option<SendMessage>, TransportError> {
        match message {
            SendMessage::Text(text) => self.0.write_frame_now(OPCODE_TEXT, text.as_bytes())?,
            SendMessage::Bytes(bytes, format) => self.0.write_frame_now(opcode(format, &bytes)?, &bytes)?,
        }
        Ok(None)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.0.poll_write_unsent(cx)
    }

    async fn close(mut self, kind: CloseKind) {
        let code: u16 = match kind {
            CloseKind::Normal => 1000,
        };
        let inner = &mut self.0;
        let ending = async {
            if inner.write_frame(OPCODE_CLOSE, &code.to_be_bytes()).await.is_err() {
                return;
            }
            let _ = poll_fn(|cx| Pin::new(&mut inner.io).poll_shutdown(cx)).await;
            // Wait for the client's Close (or its end of the stream), so that unread input does not make the kernel
            // reset the socket, which can destroy the Close frame before the client reads it.
            while !inner.close_received && !inner.eof {
                match poll_fn(|cx| inner.poll_message(cx)).await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, ending).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let short = frame_header(OPCODE_TEXT, 125);
        assert_eq!(&short.bytes[..short.len], &[0x81, 125]);
        let medium = frame_header(OPCODE_BINARY, 126);
        assert_eq!(&medium.bytes[..medium.len], &[0x82, 126, 0, 126]);
        let long = frame_header(OPCODE_BINARY, 65_536);
        assert_eq!(&long.bytes[..long.len], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
