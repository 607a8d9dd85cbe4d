//! The link endpoint's messages and their wire codec: a [`Batch`] of frames and an [`Ack`] travel between processes
//! as ractor `Cast`s (a variant name and bytes in the encoding below); a [`Control`] never leaves the process.

use ::ractor::message::{BoxedDowncastErr, SerializedMessage};
use ::ractor::Message;
use bytes::{Buf, BufMut, Bytes};
use ractor_cluster::node::NodeServerSessionInformation;

use super::super::PeerInfo;
use crate::cluster::membership::NodeId;

/// Version byte of the link message encoding.
/// 2: a batch carries its stream and sequence number, and an acknowledgement the last batch received (links resume).
const WIRE_VERSION: u8 = 2;

const VARIANT_BATCH: &str = "hubmesh.batch";
const VARIANT_ACK: &str = "hubmesh.ack";

/// Frames from one incarnation, in send order: batch `seq` (from 1) of the sender's `stream` to the receiver, which
/// outlives the link it was first sent on (`super::sender`).
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) from: NodeId,
    pub(super) stream: u64,
    pub(super) seq: u64,
    pub(super) frames: Vec<Bytes>,
}

/// The receiver of `stream` has delivered every batch up to `received`, cumulatively.
#[derive(Debug)]
pub(super) struct Ack {
    pub(super) from: NodeId,
    pub(super) stream: u64,
    pub(super) received: u64,
}

/// Local notices to the endpoint.
pub(super) enum Control {
    UpdatePeers(Vec<PeerInfo>),
    SessionOpened(NodeServerSessionInformation),
    SessionAuthenticated(NodeServerSessionInformation),
    SessionReady(NodeServerSessionInformation),
    SessionClosed(NodeServerSessionInformation),
    DialFailed { peer: NodeId, error: String },
    Tick,
}

/// The endpoint's messages: batches and acknowledgements travel between processes, controls stay local.
pub(super) enum EndpointMsg {
    Batch(Batch),
    Ack(Ack),
    Control(Control),
}

fn put_sender(buf: &mut Vec<u8>, from: &NodeId, stream: u64) {
    buf.put_u8(WIRE_VERSION);
    let name = from.name.as_bytes();
    // Names are short; one longer than u16 cannot be sent and is cut (the peer then drops the message).
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(name.get(..usize::from(len)).unwrap_or(name));
    buf.put_u64(from.generation);
    buf.put_u64(stream);
}

fn get_sender(buf: &mut Bytes) -> Option<(NodeId, u64)> {
    if buf.remaining() < 3 || buf.get_u8() != WIRE_VERSION {
        return None;
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len + 16 {
        return None;
    }
    let name = std::str::from_utf8(&buf.split_to(len)).ok()?.to_owned();
    let generation = buf.get_u64();
    let stream = buf.get_u64();
    Some((NodeId::new(name, generation), stream))
}

impl Batch {
    fn encode(&self) -> Vec<u8> {
        let size: usize = self.frames.iter().map(|frame| frame.len() + 4).sum();
        let mut buf = Vec::with_capacity(size + self.from.name.len() + 32);
        put_sender(&mut buf, &self.from, self.stream);
        buf.put_u64(self.seq);
        buf.put_u32(u32::try_from(self.frames.len()).unwrap_or(u32::MAX));
        for frame in &self.frames {
            buf.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
            buf.put_slice(frame);
        }
        buf
    }

    fn decode(bytes: Vec<u8>) -> Option<Self> {
        let mut buf = Bytes::from(bytes);
        let (from, stream) = get_sender(&mut buf)?;
        if buf.remaining() < 12 {
            return None;
        }
        let seq = buf.get_u64();
        let count = buf.get_u32() as usize;
        // Every frame takes at least its 4-byte length: a count larger than that is a lie.
        if count > buf.remaining() / 4 {
            return None;
        }
        let mut frames = Vec::with_capacity(count);
        for _ in 0..count {
            if buf.remaining() < 4 {
                return None;
            }
            let len = buf.get_u32() as usize;
            if buf.remaining() < len {
                return None;
            }
            frames.push(buf.split_to(len));
        }
        Some(Batch {
            from,
            stream,
            seq,
            frames,
        })
    }
}

impl Ack {
    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.from.name.len() + 40);
        put_sender(&mut buf, &self.from, self.stream);
        buf.put_u64(self.received);
        buf
    }

    fn decode(bytes: Vec<u8>) -> Option<Self> {
        let mut buf = Bytes::from(bytes);
        let (from, stream) = get_sender(&mut buf)?;
        if buf.remaining() < 8 {
            return None;
        }
        Some(Ack {
            from,
            stream,
            received: buf.get_u64(),
        })
    }
}

impl Message for EndpointMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let (variant, args) = match self {
            EndpointMsg::Batch(batch) => (VARIANT_BATCH, batch.encode()),
            EndpointMsg::Ack(ack) => (VARIANT_ACK, ack.encode()),
            EndpointMsg::Control(_) => return Err(BoxedDowncastErr),
        };
        Ok(SerializedMessage::Cast {
            variant: variant.to_owned(),
            args,
            metadata: None,
        })
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_BATCH => {
                Batch::decode(args).map(EndpointMsg::Batch).ok_or(BoxedDowncastErr)
            }
            SerializedMessage::Cast { variant, args, .. } if variant == VARIANT_ACK => {
                Ack::decode(args).map(EndpointMsg::Ack).ok_or(BoxedDowncastErr)
            }
            _ => Err(BoxedDowncastErr),
        }
    }
}
