//! Fuzzes every request message from the wire into the room: arbitrary bytes are
//! decoded as a JoinRequest, PublishRequest or LeaveRequest (the first byte picks
//! which) and, when they decode, handed to the room the way the server does, in a
//! room (over an in-memory log) where "alice" is present. Nothing panics; a request is accepted exactly when the
//! rules say so; an accepted one is stamped by Lamport's rule and reaches alice's
//! feed; a refused one changes nothing; and whatever a request carried, the next
//! event is still stamped later than every event before it.
//!
//! In a session token, '@' stands for alice's session id and '#' for her secret, so
//! the fuzzer can build near-miss tokens: only her exact token may be accepted. A
//! Join that names alice and carries her exact token as `replaces_session` replaces
//! her session; any other token leaves her name taken.

#![no_main]

use chittychat::error::ChatError;
use chittychat::event::Stamp;
use chittychat::event::{EventKind, joined_sentence};
use chittychat::feed::{Delivery, Feed};
use chittychat::lamport::LamportTime;
use chittychat::log::{Log, LogConfig};
use chittychat::pb;
use chittychat::room::{JoinOptions, Room, RoomConfig, SessionToken};
use chittychat::validate::{
    validate_lamport, validate_message, validate_name, validate_publish_id,
};
use futures::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Some((&which, wire)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(request) = decoded::<pb::JoinRequest>(wire) {
                join(request);
            }
        }
        1 => {
            if let Ok(request) = decoded::<pb::PublishRequest>(wire) {
                publish(request);
            }
        }
        _ => {
            if let Ok(request) = decoded::<pb::LeaveRequest>(wire) {
                leave(request);
            }
        }
    }
});

/// Decodes `wire` and checks that encoding the result decodes to the same message.
fn decoded<M: Message + Default + PartialEq>(wire: &[u8]) -> Result<M, prost::DecodeError> {
    let message = M::decode(wire)?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded message");
    assert!(
        again == message,
        "decode, encode, decode changed the message"
    );
    Ok(message)
}

/// A room in which alice is present and has read her own join notice.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    room: Arc<Room>,
    alice: Feed,
    token: String,
}

/// Joins `name` at `lamport` without history, replacing the session `replaces`
/// names if any, and waits until its notice is stored.
fn join_now(
    runtime: &tokio::runtime::Runtime,
    hub: &Arc<Room>,
    name: &[u8],
    lamport: LamportTime,
    replaces: Option<String>,
) -> Result<chittychat::room::Joined, ChatError> {
    let options = JoinOptions {
        history: Some(0),
        resume: None,
        replaces: replaces.map(SessionToken::new),
    };
    let joined = runtime.block_on(hub.join(name, lamport, options))?;
    runtime.block_on(hub.durable(joined.stamp.seq))?;
    Ok(joined)
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let (log, recovered) = Log::open(&LogConfig::default()).expect("an in-memory log");
        // No publish rate limit: the target checks which requests the rules accept,
        // and a flood of valid ones must all be accepted.
        let hub = Room::open(
            RoomConfig {
                publish_rate: None,
                ..RoomConfig::default()
            },
            log,
            recovered,
        );
        let mut joined = join_now(&runtime, &hub, b"alice", 0, None).expect("alice joins");
        let first = next(&mut joined.feed).expect("alice's join notice");
        assert_eq!(first.entry.kind, EventKind::Joined);
        let token = joined.token.expose().to_owned();
        Fixture {
            runtime,
            room: hub,
            alice: joined.feed,
            token,
        }
    }

    /// Replaces '@' by alice's session id and '#' by her secret.
    fn token_from(&self, pattern: &str) -> String {
        let (id, secret) = self.token.split_once('.').expect("a token has a dot");
        pattern.replace('@', id).replace('#', secret)
    }

    /// Checks that the server's clock still advances: a new event (a join, so that it
    /// works whether or not alice is still present) is stamped after `last`.
    fn assert_clock_still_rises(&self, last: LamportTime) {
        let carol = join_now(&self.runtime, &self.room, b"carol", 0, None).expect("carol joins");
        assert!(
            carol.stamp.lamport > last,
            "the clock stopped: an event at {} after one at {last}",
            carol.stamp.lamport
        );
    }

    /// Checks that a refused request left the room as it was.
    fn assert_unchanged(&mut self, lamport_before: LamportTime) {
        assert_eq!(self.room.lamport_now(), lamport_before, "the clock moved");
        assert_eq!(self.room.present(), ["alice"]);
        assert!(
            self.alice.next().now_or_never().is_none(),
            "a refused request was broadcast"
        );
    }
}

/// The event ready on `feed`, if any; `None` when none is stored or the feed ended.
fn next(feed: &mut Feed) -> Option<Delivery> {
    match feed.next().now_or_never() {
        Some(Some(Ok(event))) => Some(event),
        _ => None,
    }
}

/// Lamport's receive rule as the server applies it to a request.
fn expected_time(before: LamportTime, client: LamportTime) -> LamportTime {
    before.max(client).saturating_add(1)
}

fn join(request: pb::JoinRequest) {
    let mut fx = Fixture::new();
    let before = fx.room.lamport_now();
    let replaces =
        (!request.replaces_session.is_empty()).then(|| fx.token_from(&request.replaces_session));
    // Names are unique regardless of case, unless the Join holds alice's token.
    let replacing = request.name.eq_ignore_ascii_case(b"alice");
    let should_accept = validate_name(&request.name).is_ok()
        && validate_lamport(request.lamport, before).is_ok()
        && (!replacing || replaces.as_deref() == Some(fx.token.as_str()));
    match join_now(
        &fx.runtime,
        &fx.room,
        &request.name,
        request.lamport,
        replaces,
    ) {
        Ok(mut joined) if replacing => {
            assert!(should_accept, "accepted the name {:?}", request.name);
            let name = std::str::from_utf8(&request.name).expect("an accepted name is text");
            // Her old session leaves first, one tick before the new join notice.
            let lamport = expected_time(before, request.lamport) + 1;
            assert_eq!(joined.stamp, Stamp { lamport, seq: 3 });
            assert_eq!(fx.room.present(), [name]);
            assert!(matches!(
                fx.alice.next().now_or_never(),
                Some(Some(Err(ChatError::Replaced)))
            ));
            let event = next(&mut joined.feed).expect("the join notice").entry;
            assert_eq!(
                (event.kind, event.lamport, event.seq),
                (EventKind::Joined, lamport, 3)
            );
            fx.assert_clock_still_rises(lamport);
        }
        Ok(mut joined) => {
            assert!(should_accept, "accepted the name {:?}", request.name);
            let name = std::str::from_utf8(&request.name).expect("an accepted name is text");
            let lamport = expected_time(before, request.lamport);
            assert_eq!(joined.stamp, Stamp { lamport, seq: 2 });
            let mut present = vec!["alice".to_owned(), name.to_owned()];
            present.sort_by_key(|name| name.to_ascii_lowercase());
            assert_eq!(fx.room.present(), present);
            for feed in [&mut joined.feed, &mut fx.alice] {
                let event = next(feed).expect("the join notice").entry;
                assert_eq!(event.kind, EventKind::Joined);
                assert_eq!(&*event.participant, name);
                assert_eq!(event.text, joined_sentence(name, lamport));
                assert_eq!((event.lamport, event.seq), (lamport, 2));
            }
            if !name.eq_ignore_ascii_case("carol") {
                fx.assert_clock_still_rises(lamport);
            }
        }
        Err(err) => {
            assert!(!should_accept, "refused the name {:?}: {err}", request.name);
            assert!(
                matches!(
                    err,
                    ChatError::InvalidName { .. }
                        | ChatError::NameTaken { .. }
                        | ChatError::LamportTooFarAhead { .. }
                ),
                "{err:?}"
            );
            fx.assert_unchanged(before);
        }
    }
}

fn publish(request: pb::PublishRequest) {
    let mut fx = Fixture::new();
    let token = fx.token_from(&request.session_token);
    let before = fx.room.lamport_now();
    let rule = validate_message(&request.text)
        .and_then(|text| validate_lamport(request.lamport, before).map(|()| text))
        .and_then(|text| validate_publish_id(&request.publish_id).map(|_| text));
    let published = fx.runtime.block_on(fx.room.publish(
        &token,
        &request.text,
        request.lamport,
        &request.publish_id,
    ));
    match published {
        Ok(stamp) => {
            assert_eq!(token, fx.token, "accepted the token {token:?}");
            let text = rule.expect("accepted a message the rule refuses");
            let lamport = expected_time(before, request.lamport);
            assert_eq!(stamp, Stamp { lamport, seq: 2 });
            let event = next(&mut fx.alice)
                .expect("the message on alice's feed")
                .entry;
            assert_eq!(event.kind, EventKind::Chat);
            assert_eq!(&*event.participant, "alice");
            assert_eq!(event.text, text);
            assert_eq!((event.lamport, event.seq), (lamport, 2));
            fx.assert_clock_still_rises(lamport);
        }
        Err(err) => {
            match rule {
                // The text and the time are checked first, and refused for the rule's reason.
                Err(reason) => assert_eq!(err, reason),
                Ok(_) => {
                    assert_eq!(err, ChatError::UnknownSession);
                    assert_ne!(token, fx.token, "refused alice's own token");
                }
            }
            fx.assert_unchanged(before);
        }
    }
}

fn leave(request: pb::LeaveRequest) {
    let mut fx = Fixture::new();
    let token = fx.token_from(&request.session_token);
    let before = fx.room.lamport_now();
    let rule = validate_lamport(request.lamport, before);
    match fx.runtime.block_on(fx.room.leave(&token, request.lamport)) {
        Ok(stamp) => {
            assert_eq!(token, fx.token, "accepted the token {token:?}");
            assert_eq!(rule, Ok(()), "accepted a time too far ahead");
            let lamport = expected_time(before, request.lamport);
            assert_eq!(stamp, Stamp { lamport, seq: 2 });
            assert!(fx.room.present().is_empty());
            // The leaver's feed ends cleanly, without its own leave notice.
            assert!(matches!(fx.alice.next().now_or_never(), Some(None)));
            fx.assert_clock_still_rises(lamport);
        }
        Err(err) => {
            match rule {
                Err(reason) => assert_eq!(err, reason),
                Ok(()) => {
                    assert_eq!(err, ChatError::UnknownSession);
                    assert_ne!(token, fx.token, "refused alice's own token");
                }
            }
            fx.assert_unchanged(before);
        }
    }
}
