//! Micro-benchmarks of the work the server does per request and per broadcast:
//! validating input, the Lamport clock (alone and under contention), encoding an
//! event for the wire and committing a batch to the on-disk log. Run with
//! `cargo bench`; `TMPDIR=/dev/shm cargo bench -- log` keeps the disk's own time
//! (the fsync) out of the log's figures, leaving what a commit costs in CPU.

use chittychat::event::{Event, EventKind};
use chittychat::lamport::LamportClock;
use chittychat::log::{DiskStore, Entry, Retention, Store};
use chittychat::validate::{MAX_MESSAGE_CHARS, validate_message, validate_name};
use chittychat::wire::{EncodedEvent, encode_event};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    let ascii = "x".repeat(100);
    let longest = "é".repeat(MAX_MESSAGE_CHARS);
    for (label, text) in [
        ("ascii_100", ascii.as_str()),
        ("utf8_128", longest.as_str()),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("message", label), text, |b, text| {
            b.iter(|| validate_message(black_box(text.as_bytes())).is_ok())
        });
    }
    group.bench_function("name", |b| {
        b.iter(|| validate_name(black_box(b"participant-0042")).is_ok())
    });
    group.finish();
}

fn lamport(c: &mut Criterion) {
    let mut group = c.benchmark_group("lamport");
    let clock = LamportClock::new();
    group.bench_function("tick", |b| b.iter(|| black_box(clock.tick())));
    group.bench_function("observe", |b| {
        b.iter(|| black_box(clock.observe(black_box(17))))
    });
    // Contention: other threads hammer the same clock while this one measures.
    for rivals in [1, 3] {
        group.bench_function(BenchmarkId::new("observe_contended", rivals), |b| {
            b.iter_custom(|iterations| contended(iterations, rivals))
        });
    }
    group.finish();
}

/// Times `iterations` observes on a clock that `rivals` other threads tick nonstop.
fn contended(iterations: u64, rivals: usize) -> Duration {
    let clock = Arc::new(LamportClock::new());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(rivals + 1));
    let handles: Vec<_> = (0..rivals)
        .map(|_| {
            let (clock, stop, started) = (clock.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    black_box(clock.tick());
                }
            })
        })
        .collect();
    started.wait();
    let start = Instant::now();
    for i in 0..iterations {
        black_box(clock.observe(black_box(i)));
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.join().expect("a rival thread panicked");
    }
    elapsed
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let event = Event {
        kind: EventKind::Chat,
        participant: Arc::from("participant-0042"),
        text: "x".repeat(100),
        lamport: 1_234_567,
        seq: 7_654_321,
    };
    // Once per broadcast: the server's cost, shared by every recipient.
    group.bench_function("event_once", |b| b.iter(|| encode_event(black_box(&event))));
    // Per recipient: what tonic does with an already encoded event.
    let entry = Arc::new(Entry::new(event.clone(), None, 0));
    entry.wire(encode_event);
    let encoded = EncodedEvent::from(entry);
    let mut buf = Vec::with_capacity(256);
    group.bench_function("event_per_recipient", |b| {
        b.iter(|| {
            buf.clear();
            prost::Message::encode(black_box(&encoded), &mut buf).is_ok()
        })
    });
    group.finish();
}

/// Events in one commit: a few, as at a modest rate, to many, as a saturated
/// publisher's stream gathers between two commits.
const COMMIT_BATCHES: [u64; 3] = [4, 64, 512];

/// Committing a batch of chat messages, each published under an id, to a log that
/// is full, so every commit also trims as many events as it appends: the log
/// writer's steady state under load.
fn log_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = DiskStore::open(dir.path()).expect("a new log");
    let retention = Retention {
        max_events: 20_000,
        max_age: None,
    };
    let entry = |seq: u64| {
        let event = Event {
            kind: EventKind::Chat,
            participant: Arc::from("participant-0042"),
            text: "x".repeat(100),
            lamport: seq,
            seq,
        };
        Arc::new(Entry::new(event, Some(format!("{seq:016x}").into()), 0))
    };
    let mut next = 1;
    let mut batch = |size: u64| {
        let batch: Vec<_> = (next..next + size).map(entry).collect();
        next += size;
        batch
    };
    for _ in 0..retention.max_events.div_ceil(1024) {
        store.append(&batch(1024), &retention).expect("a commit");
    }
    for size in COMMIT_BATCHES {
        group.throughput(Throughput::Elements(size));
        group.bench_function(BenchmarkId::new("commit_full", size), |b| {
            b.iter_batched(
                || batch(size),
                |entries| store.append(&entries, &retention).expect("a commit"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, validation, lamport, encoding, log_commit);
criterion_main!(benches);
