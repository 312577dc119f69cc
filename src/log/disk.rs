//! The on-disk store: a redb database in the server's data directory.
//!
//! redb is an embedded, pure-Rust key-value store with ACID transactions: a commit
//! is durable when it returns (one fsync), and a crash at any moment leaves the last
//! committed state. Events are keyed by sequence number, so reading from a position
//! and trimming the oldest are range operations on an ordered table. The record
//! of each event is a small JSON object, readable by any tool that reads redb.
//!
//! Tables, all changed in the same transaction as the events they follow from:
//! - `events`: sequence number → the event, with the publish id of a chat message
//!   published under one.
//! - `meta`: the format version, the head and the largest Lamport time (kept even
//!   when every event has been trimmed); `epoch`: the log's epoch.
//! - `present`: participants who joined and have not left, so a restart after a
//!   crash can announce that they left.
//!
//! The publish ids the server remembers are those of the events held, and it looks
//! them up in memory; a restart reads them back from the events' records. Format
//! version 2 also kept them in a table of their own, which made every commit write
//! a second table's pages, about a third of a commit's cost, to spare a restart
//! reading the records; version 3 drops it.

use super::{CACHE_EVENTS, Entry, Epoch, LogError, Recovered, Retention, Store, now_ms};
use crate::event::{Event, EventKind, PublishKey, Stamp};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The database's file name inside the data directory.
pub const DATABASE_FILE: &str = "chittychat.redb";

/// Past this many events to skim for their publish ids, a restart reads the two
/// halves of them on two threads.
const PARALLEL_SCAN_EVENTS: u64 = 65_536;

/// The file in the data directory that says which server holds it, so a second
/// server can name the first.
pub const OWNER_FILE: &str = "owner";

/// The version of the tables' layout and records this server writes and reads.
const FORMAT_VERSION: u64 = 3;

/// The earlier layouts this server upgrades when it opens them, by dropping the
/// table in which each kept a copy of the publish ids: version 1 in a table keyed
/// by "participant\nid" (`V1_PUBLISH_IDS`), version 2 keyed by sequence number
/// (`V2_PUBLISH_IDS`). Every version's records carry their publish ids.
const OLDER_FORMATS: [(u64, &str); 2] = [(1, "publish_ids"), (2, "publish_ids_by_seq")];

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const EPOCH: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("epoch");
/// Version 1's publish ids: "participant\nid" → (sequence number, Lamport time).
#[cfg(test)]
const V1_PUBLISH_IDS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("publish_ids");
/// Version 2's: sequence number → (participant, publish id, Lamport time).
#[cfg(test)]
const V2_PUBLISH_IDS: TableDefinition<'_, u64, (&str, &str, u64)> =
    TableDefinition::new("publish_ids_by_seq");
const PRESENT: TableDefinition<'_, &str, u64> = TableDefinition::new("present");

const META_FORMAT: &str = "format";
const META_HEAD: &str = "head";
const META_LAMPORT: &str = "lamport";

/// One event as stored. Written from the entry's own strings and read without
/// copying them where the JSON holds them unescaped.
#[derive(Debug, Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    participant: Cow<'a, str>,
    #[serde(borrow)]
    text: Cow<'a, str>,
    lamport: u64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    publish_id: Option<Cow<'a, str>>,
    appended_ms: u64,
}

/// What a restart needs of a stored event that it does not keep: who published it
/// under which id, and when. The rest of the record is skipped, not copied.
#[derive(Debug, Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    participant: Cow<'a, str>,
    lamport: u64,
    #[serde(default, borrow)]
    publish_id: Option<Cow<'a, str>>,
}

/// The log in a redb database.
#[derive(Debug)]
pub struct DiskStore {
    db: Database,
    path: PathBuf,
}

impl DiskStore {
    /// Opens (or creates) the log in `dir`, creating the directory if needed. Refuses
    /// a directory another server holds, and a database that is damaged or of an
    /// unknown format; never starts empty over data it cannot read.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let unusable = |reason: String| LogError::Unusable {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|err| unusable(err.to_string()))?;
        let path = dir.join(DATABASE_FILE);
        let corrupt = |reason: String| LogError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        let db = match builder.create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch) => {
                let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
                    .map(|owner| format!(" ({})", owner.trim()))
                    .unwrap_or_default();
                return Err(LogError::Locked {
                    path: dir.to_owned(),
                    owner,
                });
            }
            Err(DatabaseError::UpgradeRequired(version)) => {
                return Err(corrupt(format!("redb file format {version}")));
            }
            Err(DatabaseError::Storage(StorageError::Io(err)))
                if err.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(LogError::Unusable {
                    path: path.clone(),
                    reason: err.to_string(),
                });
            }
            Err(err) => return Err(corrupt(err.to_string())),
        };
        let store = Self { db, path };
        store.initialise()?;
        let owner = format!("pid {}", std::process::id());
        std::fs::write(dir.join(OWNER_FILE), owner).map_err(|err| unusable(err.to_string()))?;
        Ok(store)
    }

    /// Writes the format version and a new epoch into a new database; checks them in
    /// an existing one.
    fn initialise(&self) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.failed(e))?;
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| self.failed(e))?
                .map(|v| v.value());
            let mut epoch = txn.open_table(EPOCH).map_err(|e| self.failed(e))?;
            let older = |version| OLDER_FORMATS.iter().find(|(old, _)| *old == version);
            match format {
                Some(version) if version == FORMAT_VERSION || older(version).is_some() => {
                    let stored = epoch.get("epoch").map_err(|e| self.failed(e))?;
                    let valid = stored.is_some_and(|v| v.value().len() == 16);
                    if !valid {
                        return Err(self.corrupt("the log has no epoch".into()));
                    }
                    if let Some((version, ids_table)) = older(version) {
                        self.upgrade(&txn, *version, ids_table)?;
                        meta.insert(META_FORMAT, FORMAT_VERSION)
                            .map_err(|e| self.failed(e))?;
                    }
                }
                Some(other) => {
                    return Err(self.corrupt(format!(
                        "format version {other}; this server reads version {FORMAT_VERSION}"
                    )));
                }
                None => {
                    let events = txn.open_table(EVENTS).map_err(|e| self.failed(e))?;
                    if !events.is_empty().map_err(|e| self.failed(e))? {
                        return Err(self.corrupt("events without a format version".into()));
                    }
                    meta.insert(META_FORMAT, FORMAT_VERSION)
                        .map_err(|e| self.failed(e))?;
                    epoch
                        .insert("epoch", Epoch::random().to_bytes().as_slice())
                        .map_err(|e| self.failed(e))?;
                }
            }
            txn.open_table(PRESENT).map_err(|e| self.failed(e))?;
        }
        txn.commit().map_err(|e| self.failed(e))
    }

    /// Upgrades a log of an earlier format `version` inside `txn`, so that the
    /// upgrade happens whole or not at all: drops `ids_table`, whose publish ids the
    /// events themselves carry.
    fn upgrade(
        &self,
        txn: &redb::WriteTransaction,
        version: u64,
        ids_table: &str,
    ) -> Result<(), LogError> {
        let table = txn
            .list_tables()
            .map_err(|e| self.failed(e))?
            .find(|table| table.name() == ids_table);
        if let Some(table) = table {
            txn.delete_table(table).map_err(|e| self.failed(e))?;
        }
        tracing::info!(
            path = %self.path.display(),
            "upgraded the log from format version {version} to {FORMAT_VERSION}"
        );
        Ok(())
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn failed(&self, err: impl Into<redb::Error>) -> LogError {
        match err.into() {
            redb::Error::Corrupted(reason) => self.corrupt(reason),
            redb::Error::TableTypeMismatch { .. } | redb::Error::TypeDefinitionChanged { .. } => {
                self.corrupt("a table of another layout".into())
            }
            other => LogError::WriteFailed(format!("{}: {other}", self.path.display())),
        }
    }

    /// The publish ids of the events in `range`, in order, read from their records
    /// without decoding the rest.
    fn published_in(
        &self,
        events: &redb::ReadOnlyTable<u64, &[u8]>,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(PublishKey, Stamp)>, LogError> {
        let mut ids = Vec::new();
        for item in events.range(range).map_err(|e| self.failed(e))? {
            let (seq, bytes) = item.map_err(|e| self.failed(e))?;
            let seq = seq.value();
            let published: Published<'_> = serde_json::from_slice(bytes.value())
                .map_err(|err| self.corrupt(format!("event {seq}: {err}")))?;
            if let Some(id) = published.publish_id {
                let stamp = Stamp {
                    lamport: published.lamport,
                    seq,
                };
                ids.push((PublishKey::new(&published.participant, &id), stamp));
            }
        }
        Ok(ids)
    }

    fn decode(&self, seq: u64, bytes: &[u8]) -> Result<Arc<Entry>, LogError> {
        let record: Record<'_> = serde_json::from_slice(bytes)
            .map_err(|err| self.corrupt(format!("event {seq}: {err}")))?;
        let kind: EventKind = record
            .kind
            .parse()
            .map_err(|err| self.corrupt(format!("event {seq}: {err}")))?;
        let event = Event {
            kind,
            participant: Arc::from(&*record.participant),
            text: record.text.into_owned(),
            lamport: record.lamport,
            seq,
        };
        Ok(Arc::new(Entry::new(
            event,
            record.publish_id.map(|id| Box::from(&*id)),
            record.appended_ms,
        )))
    }

    /// Trims what `retention` no longer keeps, inside `txn`.
    fn trim_in(
        &self,
        txn: &redb::WriteTransaction,
        retention: &Retention,
    ) -> Result<u64, LogError> {
        let mut events = txn.open_table(EVENTS).map_err(|e| self.failed(e))?;
        let held = events.len().map_err(|e| self.failed(e))?;
        if held > retention.max_events {
            // The events held are numbered without a gap, so those beyond the limit
            // are a range at the front: removed without being read.
            let first = events
                .first()
                .map_err(|e| self.failed(e))?
                .map_or(0, |(seq, _)| seq.value());
            let cut = first + (held - retention.max_events);
            events
                .retain_in(..cut, |_, _| false)
                .map_err(|e| self.failed(e))?;
        }
        if let Some(age) = retention.max_age {
            // By age, the oldest are read one at a time until one is young enough.
            let oldest_kept =
                now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            loop {
                let first = events
                    .first()
                    .map_err(|e| self.failed(e))?
                    .map(|(seq, bytes)| (seq.value(), self.decode(seq.value(), bytes.value())));
                let Some((seq, record)) = first else {
                    break;
                };
                if record?.appended_ms() >= oldest_kept {
                    break;
                }
                events.remove(seq).map_err(|e| self.failed(e))?;
            }
        }
        let first = events
            .first()
            .map_err(|e| self.failed(e))?
            .map(|(seq, _)| seq.value());
        let meta = txn.open_table(META).map_err(|e| self.failed(e))?;
        let head = meta
            .get(META_HEAD)
            .map_err(|e| self.failed(e))?
            .map_or(0, |v| v.value());
        Ok(first.unwrap_or(head + 1))
    }
}

impl Store for DiskStore {
    fn recover(&self) -> Result<Recovered, LogError> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let meta = txn.open_table(META).map_err(|e| self.failed(e))?;
        let get = |key: &str| -> Result<u64, LogError> {
            Ok(meta
                .get(key)
                .map_err(|e| self.failed(e))?
                .map_or(0, |v| v.value()))
        };
        let (head, last_lamport) = (get(META_HEAD)?, get(META_LAMPORT)?);
        let epoch_table = txn.open_table(EPOCH).map_err(|e| self.failed(e))?;
        let epoch_bytes: [u8; 16] = epoch_table
            .get("epoch")
            .map_err(|e| self.failed(e))?
            .and_then(|v| v.value().try_into().ok())
            .ok_or_else(|| self.corrupt("the log has no epoch".into()))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.failed(e))?;
        let first_held = events
            .first()
            .map_err(|e| self.failed(e))?
            .map_or(head + 1, |(seq, _)| seq.value());
        // The publish ids of every event held, and the newest events in full for
        // the log's cache. The older events are only skimmed for their ids, the
        // two halves of them side by side when there are many.
        let recent_from = head.saturating_sub(CACHE_EVENTS as u64 - 1).max(first_held);
        let older = first_held..recent_from;
        let mut publish_ids = if older.end - older.start < PARALLEL_SCAN_EVENTS {
            self.published_in(&events, older)?
        } else {
            let middle = older.start + (older.end - older.start) / 2;
            let (mut first_half, second_half) = std::thread::scope(|scope| {
                let first_half = scope.spawn(|| self.published_in(&events, older.start..middle));
                let second_half = self.published_in(&events, middle..older.end);
                let first_half = first_half
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Ok::<_, LogError>((first_half?, second_half?))
            })?;
            first_half.extend(second_half);
            first_half
        };
        let mut recent = Vec::new();
        for item in events.range(recent_from..).map_err(|e| self.failed(e))? {
            let (seq, bytes) = item.map_err(|e| self.failed(e))?;
            let entry = self.decode(seq.value(), bytes.value())?;
            if let Some(id) = entry.publish_id() {
                let stamp = Stamp {
                    lamport: entry.lamport,
                    seq: entry.seq,
                };
                publish_ids.push((PublishKey::new(&entry.participant, id), stamp));
            }
            recent.push(entry);
        }
        if recent.last().is_some_and(|entry| entry.seq != head) {
            return Err(self.corrupt(format!("the head is {head} but the newest event is not")));
        }
        let present = txn.open_table(PRESENT).map_err(|e| self.failed(e))?;
        let mut names = Vec::new();
        for item in present.iter().map_err(|e| self.failed(e))? {
            let (name, _) = item.map_err(|e| self.failed(e))?;
            names.push(Arc::from(name.value()));
        }
        Ok(Recovered {
            epoch: Epoch::from_bytes(epoch_bytes),
            head,
            first_held,
            last_lamport,
            present: names,
            publish_ids,
            recent,
        })
    }

    fn append(&self, entries: &[Arc<Entry>], retention: &Retention) -> Result<u64, LogError> {
        let txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.failed(e))?;
            let mut present = txn.open_table(PRESENT).map_err(|e| self.failed(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.failed(e))?;
            let mut bytes = Vec::new();
            for entry in entries {
                let record = Record {
                    kind: Cow::Borrowed(entry.kind.as_str()),
                    participant: Cow::Borrowed(&entry.participant),
                    text: Cow::Borrowed(&entry.text),
                    lamport: entry.lamport,
                    publish_id: entry.publish_id().map(Cow::Borrowed),
                    appended_ms: entry.appended_ms(),
                };
                bytes.clear();
                serde_json::to_writer(&mut bytes, &record)
                    .map_err(|err| LogError::WriteFailed(err.to_string()))?;
                events
                    .insert(entry.seq, bytes.as_slice())
                    .map_err(|e| self.failed(e))?;
                match entry.kind {
                    EventKind::Joined => {
                        present
                            .insert(&*entry.participant, entry.seq)
                            .map_err(|e| self.failed(e))?;
                    }
                    EventKind::Left => {
                        present
                            .remove(&*entry.participant)
                            .map_err(|e| self.failed(e))?;
                    }
                    EventKind::Chat => {}
                }
            }
            if let Some(last) = entries.last() {
                meta.insert(META_HEAD, last.seq)
                    .map_err(|e| self.failed(e))?;
                let lamport = entries.iter().map(|e| e.lamport).max().unwrap_or(0);
                let stored = meta
                    .get(META_LAMPORT)
                    .map_err(|e| self.failed(e))?
                    .map_or(0, |v| v.value());
                meta.insert(META_LAMPORT, lamport.max(stored))
                    .map_err(|e| self.failed(e))?;
            }
        }
        let first = self.trim_in(&txn, retention)?;
        txn.commit().map_err(|e| self.failed(e))?;
        Ok(first)
    }

    fn trim(&self, retention: &Retention) -> Result<u64, LogError> {
        let txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        let first = self.trim_in(&txn, retention)?;
        txn.commit().map_err(|e| self.failed(e))?;
        Ok(first)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Entry>>, LogError> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.failed(e))?;
        let mut out = Vec::new();
        for item in events.range(from..).map_err(|e| self.failed(e))?.take(max) {
            let (seq, bytes) = item.map_err(|e| self.failed(e))?;
            let seq = seq.value();
            if seq != from + out.len() as u64 {
                // The position was trimmed: the first event held is later.
                return Ok(Vec::new());
            }
            out.push(self.decode(seq, bytes.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Log, MAX_COMMIT_BATCH};

    fn retention(max_events: u64) -> Retention {
        Retention {
            max_events,
            max_age: None,
        }
    }

    #[tokio::test]
    async fn a_reopened_log_continues_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = {
            let store = Arc::new(DiskStore::open(dir.path()).unwrap());
            let (log, recovered) = Log::with_store(store, retention(100)).unwrap();
            assert_eq!((recovered.head, recovered.first_held), (0, 1));
            log.append(EventKind::Joined, Arc::from("alice"), "j".into(), 3, None);
            log.append(
                EventKind::Chat,
                Arc::from("alice"),
                "hi".into(),
                5,
                Some("id-1".into()),
            );
            log.append(EventKind::Joined, Arc::from("bob"), "j".into(), 6, None);
            log.append(EventKind::Left, Arc::from("bob"), "l".into(), 7, None);
            log.durable(4).await.unwrap();
            log.epoch()
        };
        // Dropping the log stopped its writer and closed the database.
        let store = DiskStore::open(dir.path()).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.epoch, epoch);
        assert_eq!((recovered.head, recovered.first_held), (4, 1));
        assert_eq!(recovered.last_lamport, 7);
        assert_eq!(recovered.present, vec![Arc::<str>::from("alice")]);
        assert_eq!(recovered.publish_ids.len(), 1);
        assert_eq!(
            recovered.publish_ids[0],
            (
                PublishKey::new("alice", "id-1"),
                Stamp { lamport: 5, seq: 2 }
            )
        );
        let texts: Vec<String> = recovered.recent.iter().map(|e| e.text.clone()).collect();
        assert_eq!(texts, ["j", "hi", "j", "l"]);
    }

    #[test]
    fn text_that_json_escapes_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let text = "\"quoted\" \\ back\nslash, tab\t, héllo ✓";
        let event = Event {
            kind: EventKind::Chat,
            participant: Arc::from("a\"b"),
            text: text.to_owned(),
            lamport: 3,
            seq: 1,
        };
        let entry = Arc::new(Entry::new(event, Some("id-\\1".into()), now_ms()));
        store.append(&[entry], &retention(10)).unwrap();
        let read = store.read(1, 1).unwrap();
        assert_eq!(read[0].text, text);
        assert_eq!(&*read[0].participant, "a\"b");
        assert_eq!(read[0].publish_id(), Some("id-\\1"));
    }

    #[test]
    fn trimming_keeps_the_head_and_forgets_trimmed_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let entries = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Arc<Entry>> {
            seqs.map(|seq| {
                let event = Event {
                    kind: EventKind::Chat,
                    participant: Arc::from("a"),
                    text: format!("m{seq}"),
                    lamport: seq * 2,
                    seq,
                };
                // Appended ten seconds ago, so that trimming by age has work.
                let appended = now_ms() - 10_000;
                Arc::new(Entry::new(event, Some(format!("id{seq}").into()), appended))
            })
            .collect()
        };
        assert_eq!(store.append(&entries(1..=3), &retention(10)).unwrap(), 1);
        // Two more than the limit, from a log that does not start at 1.
        assert_eq!(store.append(&entries(4..=5), &retention(2)).unwrap(), 4);
        let recovered = store.recover().unwrap();
        assert_eq!((recovered.head, recovered.first_held), (5, 4));
        let kept_ids: Vec<u64> = recovered.publish_ids.iter().map(|(_, s)| s.seq).collect();
        assert_eq!(kept_ids, [4, 5]);
        assert!(store.read(2, 10).unwrap().is_empty());
        let seqs: Vec<u64> = store.read(4, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 5]);
        // Everything aged out: the head and the Lamport time stay.
        let aged = Retention {
            max_events: 10,
            max_age: Some(std::time::Duration::from_secs(5)),
        };
        assert_eq!(store.trim(&aged).unwrap(), 6);
        let recovered = store.recover().unwrap();
        assert_eq!((recovered.head, recovered.first_held), (5, 6));
        assert_eq!(recovered.last_lamport, 10);
    }

    #[test]
    fn a_restart_reads_back_every_publish_id_in_order() {
        // Enough events that the older ones are skimmed on two threads.
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).unwrap();
        let total = PARALLEL_SCAN_EVENTS + CACHE_EVENTS as u64 + 1_000;
        let entries: Vec<Arc<Entry>> = (1..=total)
            .map(|seq| {
                let (kind, id) = if seq % 3 == 0 {
                    (EventKind::Joined, None)
                } else {
                    (EventKind::Chat, Some(format!("id-{seq}").into()))
                };
                let event = Event {
                    kind,
                    participant: Arc::from(format!("p{}", seq % 7).as_str()),
                    text: format!("m{seq}"),
                    lamport: seq + 10,
                    seq,
                };
                Arc::new(Entry::new(event, id, now_ms()))
            })
            .collect();
        for batch in entries.chunks(MAX_COMMIT_BATCH) {
            store.append(batch, &retention(total)).unwrap();
        }
        let recovered = store.recover().unwrap();
        let expected: Vec<(PublishKey, Stamp)> = (1..=total)
            .filter(|seq| seq % 3 != 0)
            .map(|seq| {
                let key = PublishKey::new(&format!("p{}", seq % 7), &format!("id-{seq}"));
                let stamp = Stamp {
                    lamport: seq + 10,
                    seq,
                };
                (key, stamp)
            })
            .collect();
        assert!(recovered.publish_ids == expected, "the ids differ");
        assert_eq!(recovered.recent.len(), CACHE_EVENTS);
        assert_eq!(recovered.recent.last().map(|e| e.seq), Some(total));
    }

    /// Writes a log in an earlier format's layout, as that server wrote it, with
    /// its copy of the publish ids in `write_ids`.
    fn write_older_log(
        dir: &Path,
        version: u64,
        epoch: Epoch,
        write_ids: impl FnOnce(&redb::WriteTransaction),
    ) {
        let db = Database::create(dir.join(DATABASE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_FORMAT, version).unwrap();
            meta.insert(META_HEAD, 2).unwrap();
            meta.insert(META_LAMPORT, 5).unwrap();
            let mut epochs = txn.open_table(EPOCH).unwrap();
            epochs.insert("epoch", epoch.to_bytes().as_slice()).unwrap();
            let mut events = txn.open_table(EVENTS).unwrap();
            let joined = br#"{"kind":"joined","participant":"alice","text":"j","lamport":3,"appended_ms":1}"#;
            let chat = br#"{"kind":"chat","participant":"alice","text":"hi","lamport":5,"publish_id":"id-1","appended_ms":2}"#;
            events.insert(1, joined.as_slice()).unwrap();
            events.insert(2, chat.as_slice()).unwrap();
            txn.open_table(PRESENT).unwrap().insert("alice", 1).unwrap();
        }
        write_ids(&txn);
        txn.commit().unwrap();
    }

    #[test]
    fn logs_of_earlier_formats_are_upgraded_keeping_their_publish_ids() {
        for (version, ids_table) in OLDER_FORMATS {
            let dir = tempfile::tempdir().unwrap();
            let epoch = Epoch::random();
            write_older_log(dir.path(), version, epoch, |txn| {
                if version == 1 {
                    let mut ids = txn.open_table(V1_PUBLISH_IDS).unwrap();
                    ids.insert("alice\nid-1", (2, 5)).unwrap();
                } else {
                    let mut ids = txn.open_table(V2_PUBLISH_IDS).unwrap();
                    ids.insert(2, ("alice", "id-1", 5)).unwrap();
                }
            });
            for _ in 0..2 {
                // Upgraded on the first open; the second finds the current version.
                let store = DiskStore::open(dir.path()).unwrap();
                let recovered = store.recover().unwrap();
                assert_eq!(recovered.epoch, epoch);
                assert_eq!((recovered.head, recovered.first_held), (2, 1));
                assert_eq!(
                    recovered.publish_ids,
                    [(
                        PublishKey::new("alice", "id-1"),
                        Stamp { lamport: 5, seq: 2 }
                    )],
                    "version {version}"
                );
                assert_eq!(recovered.present, [Arc::<str>::from("alice")]);
                let txn = store.db.begin_read().unwrap();
                let meta = txn.open_table(META).unwrap();
                assert_eq!(
                    meta.get(META_FORMAT).unwrap().unwrap().value(),
                    FORMAT_VERSION
                );
                let tables: Vec<String> = txn
                    .list_tables()
                    .unwrap()
                    .map(|table| table.name().to_owned())
                    .collect();
                assert!(
                    !tables.iter().any(|name| name == ids_table),
                    "version {version}'s table of ids is gone: {tables:?}"
                );
            }
        }
    }

    #[test]
    fn a_log_of_an_unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_older_log(dir.path(), FORMAT_VERSION + 1, Epoch::random(), |_| {});
        let err = DiskStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_database_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATABASE_FILE), vec![0x5a; 4096]).unwrap();
        let err = DiskStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(DATABASE_FILE), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(DATABASE_FILE)).unwrap(),
            vec![0x5a; 4096]
        );
    }
}
