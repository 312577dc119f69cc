//! The server's wire form of an event: encoded once per broadcast, shared by every
//! recipient's stream, and written to each of them byte for byte.
//!
//! The gRPC server is generated from the same proto with `.chittychat.v1.Event`
//! mapped to [`EncodedEvent`] (see `build.rs`), so the Join stream carries these
//! bytes instead of a `pb::Event` that tonic would encode again for every
//! recipient. Clients are generated from the public proto and decode a plain
//! `pb::Event`: the bytes are exactly what `pb::Event::encode` writes.

use crate::event::{Event, EventKind};
use crate::feed::Delivery;
use crate::log::Entry;
use crate::pb;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The bytes tonic sets aside up front for each call's encoding and decoding
/// buffers.
///
/// tonic's default is 8 KiB each per call. An encoding buffer is held for as long
/// as the call lasts: for a server whose every participant keeps its Join stream
/// open, that is the largest single piece of memory per idle participant. Every
/// request and reply here is a few hundred bytes at most, and 1 KiB is small enough
/// for the allocator's per-thread cache, so each Publish also allocates faster. A
/// burst simply grows a buffer in steps of this size.
pub const CODEC_BUFFER_BYTES: usize = 1024;

/// How much encoded data tonic gathers before handing it to HTTP/2 (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// The server's codec: protobuf through prost, with [`CODEC_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            CODEC_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            CODEC_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }
}

/// `event` as the generated `pb::Event`, marked as history or not.
pub fn pb_event(event: &Event, history: bool) -> pb::Event {
    let kind = match event.kind {
        EventKind::Chat => pb::EventKind::Chat,
        EventKind::Joined => pb::EventKind::Joined,
        EventKind::Left => pb::EventKind::Left,
    };
    pb::Event {
        kind: kind.into(),
        participant: event.participant.to_string(),
        text: event.text.clone(),
        lamport: event.lamport,
        seq: event.seq,
        history,
    }
}

/// Encodes `event` as the `chittychat.v1.Event` message.
pub fn encode_event(event: &Event) -> Bytes {
    // Once per event, not per recipient: the copies here do not matter.
    Bytes::from(pb_event(event, false).encode_to_vec())
}

/// The `history` field (6) set to true, as protobuf writes it: the key (field 6,
/// varint) and the value 1. Appended to the shared bytes for a recipient that gets
/// the event as history; protobuf readers take fields in any order.
const HISTORY_FIELD: [u8; 2] = [6 << 3, 1];

/// An event on its way to one recipient, as the `Event` message tonic writes.
///
/// It holds the log's entry itself, not a copy of its bytes, so handing it to a
/// recipient's stream costs one reference count.
#[derive(Debug, Clone, Default)]
pub struct EncodedEvent(Option<Arc<Entry>>, bool);

impl EncodedEvent {
    /// The encoded bytes shared by every recipient (without the history flag).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Some(entry) => entry.wire(encode_event),
            None => &[],
        }
    }
}

impl From<Arc<Entry>> for EncodedEvent {
    fn from(entry: Arc<Entry>) -> Self {
        EncodedEvent(Some(entry), false)
    }
}

impl From<Delivery> for EncodedEvent {
    fn from(delivery: Delivery) -> Self {
        EncodedEvent(Some(delivery.entry), delivery.history)
    }
}

impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.as_bytes());
        if self.1 {
            buf.put_slice(&HISTORY_FIELD);
        }
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
        self.as_bytes().len() + if self.1 { HISTORY_FIELD.len() } else { 0 }
    }

    fn clear(&mut self) {
        self.0 = None;
        self.1 = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_decode_the_bytes_as_the_event() {
        let event = Event {
            kind: EventKind::Chat,
            participant: Arc::from("alice"),
            text: "héllo ✓".into(),
            lamport: 42,
            seq: 7,
        };
        let bytes = encode_event(&event);
        let decoded = pb::Event::decode(bytes.clone()).unwrap();
        assert_eq!(decoded.kind(), pb::EventKind::Chat);
        assert_eq!(decoded.participant, "alice");
        assert_eq!(decoded.text, "héllo ✓");
        assert_eq!((decoded.lamport, decoded.seq), (42, 7));
        assert_eq!(decoded.encode_to_vec(), bytes.to_vec());
    }

    #[test]
    fn tonic_writes_the_bytes_verbatim_and_the_history_flag_after_them() {
        let event = Event {
            kind: EventKind::Joined,
            participant: Arc::from("alice"),
            text: "Participant alice joined Chitty-Chat at Lamport time 1".into(),
            lamport: 1,
            seq: 1,
        };
        let entry = Arc::new(Entry::new(event, None, 0));
        let expected = encode_event(&entry);
        let live = EncodedEvent::from(Arc::clone(&entry));
        assert_eq!(live.encoded_len(), expected.len());
        assert_eq!(live.encode_to_vec(), expected.to_vec());
        let history = EncodedEvent::from(Delivery {
            entry,
            history: true,
        });
        let decoded = pb::Event::decode(history.encode_to_vec().as_slice()).unwrap();
        assert!(decoded.history);
        assert_eq!(decoded.seq, 1);
        assert_eq!(history.encoded_len(), expected.len() + 2);
        assert_eq!(EncodedEvent::default().encode_to_vec(), Vec::<u8>::new());
    }
}
