//! The server's wire form of an event: encoded once per broadcast, shared by every
//! recipient's stream, and written to each of them byte for byte.
//!
//! The gRPC server is generated from the same proto with `.chittychat.v1.Event`
//! mapped to [`EncodedEvent`] (see `build.rs`), so the Join stream carries these
//! bytes instead of a `pb::Event` that tonic would encode again for every
//! recipient. Clients are generated from the public proto and decode a plain
//! `pb::Event`: the bytes are exactly what `pb::Event::encode` writes.

use crate::event::{Event, EventKind};
use crate::hub::Broadcast;
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

/// Encodes `event` as the `chittychat.v1.Event` message.
pub fn encode_event(event: &Event) -> Bytes {
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
    Bytes::from(message.encode_to_vec())
}

/// A broadcast on its way to one recipient, as the `Event` message tonic writes.
///
/// It holds the broadcast itself, not a copy of its bytes, so handing it to a
/// recipient's stream costs one reference count, taken by the hub.
#[derive(Debug, Clone, Default)]
pub struct EncodedEvent(Option<Arc<Broadcast>>);

impl EncodedEvent {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Some(broadcast) => broadcast.wire(encode_event),
            None => &[],
        }
    }
}

impl From<Arc<Broadcast>> for EncodedEvent {
    fn from(broadcast: Arc<Broadcast>) -> Self {
        EncodedEvent(Some(broadcast))
    }
}

impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.as_bytes());
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
        self.as_bytes().len()
    }

    fn clear(&mut self) {
        self.0 = None;
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
    fn tonic_writes_the_bytes_verbatim() {
        use crate::hub::{Hub, HubConfig};
        use tokio_stream::StreamExt;
        let hub = Arc::new(Hub::new(HubConfig::default()));
        let mut alice = hub.join(b"alice", 0).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let broadcast = runtime.block_on(alice.feed.next()).unwrap().unwrap();
        let expected = encode_event(&broadcast);
        let encoded = EncodedEvent::from(broadcast);
        assert_eq!(encoded.encoded_len(), expected.len());
        assert_eq!(encoded.encode_to_vec(), expected.to_vec());
        assert_eq!(EncodedEvent::default().encode_to_vec(), Vec::<u8>::new());
    }
}
