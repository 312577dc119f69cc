//! The server's wire form of an event: encoded once per broadcast, shared by every
//! recipient's stream, and written to each of them byte for byte.
//!
//! The gRPC server is generated from the same proto with `.chittychat.v1.Event`
//! mapped to [`EncodedEvent`] (see `build.rs`), so the Join stream carries these
//! bytes instead of a `pb::Event` that tonic would encode again for every
//! recipient. Clients are generated from the public proto and decode a plain
//! `pb::Event`: the bytes are exactly what `pb::Event::encode` writes.

use crate::event::{Event, EventKind};
use crate::pb;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;

/// An `Event` message already encoded as protobuf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedEvent(Bytes);

impl EncodedEvent {
    /// Encodes `event` as the `chittychat.v1.Event` message.
    pub fn encode(event: &Event) -> Self {
        let kind = match event.kind {
            EventKind::Chat => pb::EventKind::Chat,
            EventKind::Joined => pb::EventKind::Joined,
            EventKind::Left => pb::EventKind::Left,
        };
        // Once per broadcast, not per recipient: the copies here do not matter.
        let message = pb::Event {
            kind: kind.into(),
            participant: event.participant.to_string(),
            text: event.text.clone(),
            lamport: event.lamport,
            seq: event.seq,
        };
        EncodedEvent(Bytes::from(message.encode_to_vec()))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<Bytes> for EncodedEvent {
    /// Bytes that [`EncodedEvent::encode`] made earlier.
    fn from(bytes: Bytes) -> Self {
        EncodedEvent(bytes)
    }
}

impl From<EncodedEvent> for Bytes {
    fn from(encoded: EncodedEvent) -> Self {
        encoded.0
    }
}

impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // The server only ever sends events; nothing decodes into this type.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn clients_decode_the_bytes_as_the_event() {
        let event = Event {
            kind: EventKind::Chat,
            participant: Arc::from("alice"),
            text: "héllo ✓".into(),
            lamport: 42,
            seq: 7,
        };
        let encoded = EncodedEvent::encode(&event);
        // What tonic writes for an `EncodedEvent` is its bytes, verbatim.
        assert_eq!(encoded.encode_to_vec(), encoded.as_bytes().to_vec());
        let decoded = pb::Event::decode(encoded.as_bytes().clone()).unwrap();
        assert_eq!(decoded.kind(), pb::EventKind::Chat);
        assert_eq!(decoded.participant, "alice");
        assert_eq!(decoded.text, "héllo ✓");
        assert_eq!((decoded.lamport, decoded.seq), (42, 7));
        assert_eq!(decoded.encode_to_vec(), encoded.as_bytes().to_vec());
    }
}
