//! The global event log: every change an operator is told of (a publish,
//! a rollback, a hold, a resume, a failed job, an image turning failing
//! or recovering, a base that cannot be checked, a notifier's test), in
//! one order, numbered by a global sequence from 1 that is never reused.
//!
//! An entry is written in the same sled transaction as the change it
//! reports ([`log_append`] is only ever called inside one), so a version
//! is never recorded without its `published` event nor the other way
//! round. The newest [`KEEP_LOG`] entries are kept. The notifiers' outbox
//! cursors ([`OutboxRecord`]) point into it.

use chrono::{DateTime, Utc};
use rebased_core::job::JobId;
use rebased_core::{Digest, Trigger, Version};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};

use crate::{decode, encode, Reason, StateError, Store};

/// Entries kept in the global log; older ones are dropped.
pub const KEEP_LOG: u64 = 10_000;

/// The `meta` key of the last sequence number given out.
const SEQ_KEY: &[u8] = b"log_seq";
/// The `meta` key of this database's log id (part of every delivery id,
/// so a rebuilt store's sequence numbers never repeat one).
const ID_KEY: &[u8] = b"log_id";

/// One entry of the global log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Its global sequence number, from 1.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The image it is about (none for a base's error or a test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: LogKind,
}

/// What a [`LogEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogKind {
    /// A version was published.
    Published {
        /// The version.
        version: Version,
        /// Its manifest digest.
        digest: Digest,
        /// The version it superseded.
        previous_version: Option<Version>,
        /// Why it was built: each input before and after.
        reason: Option<Reason>,
        /// What caused the build.
        trigger: Trigger,
        /// The job that published it.
        job: Option<JobId>,
    },
    /// The floating tags were moved back by an operator.
    RolledBack {
        /// The version that was current.
        from: Option<Version>,
        /// The version current again.
        to: Version,
        /// Its digest.
        digest: Digest,
    },
    /// The image was held.
    Held {
        /// Why.
        reason: String,
    },
    /// A hold ended.
    Resumed,
    /// A job gave up (its retries spent).
    Failed {
        /// The job.
        job: Option<JobId>,
        /// Its error.
        error: String,
    },
    /// The image turned failing: it is not built again until its inputs differ.
    Failing {
        /// The job whose failure made it so (none: its Dockerfile could
        /// not be read).
        job: Option<JobId>,
        /// Why.
        error: Option<String>,
    },
    /// The image left failing: it is fresh again.
    Recovered {
        /// The version current after it (a publish), if known.
        version: Option<Version>,
        /// The job that published it.
        job: Option<JobId>,
    },
    /// A base could not be checked (said once per distinct error).
    BaseError {
        /// The base reference.
        base: String,
        /// The error.
        error: String,
    },
    /// The immutability audit found a version tag, a floating tag or a
    /// signature that is not as the ledger says (and whether it was
    /// repaired).
    Drift {
        /// What was expected and what was found.
        finding: crate::Finding,
    },
    /// A test event, sent to one notifier (or every one: `None`).
    Test {
        /// The notifier it is for.
        notifier: Option<String>,
    },
}

impl LogKind {
    /// The event's type as the wire names it (`published`, `base_error`...).
    pub fn name(&self) -> &'static str {
        match self {
            LogKind::Published { .. } => "published",
            LogKind::RolledBack { .. } => "rolled_back",
            LogKind::Held { .. } => "held",
            LogKind::Resumed => "resumed",
            LogKind::Failed { .. } => "failed",
            LogKind::Failing { .. } => "failing",
            LogKind::Recovered { .. } => "recovered",
            LogKind::BaseError { .. } => "base_error",
            LogKind::Drift { .. } => "drift",
            LogKind::Test { .. } => "test",
        }
    }

    /// Every type name, in the order the docs list them.
    pub const NAMES: [&'static str; 10] = [
        "published",
        "failed",
        "failing",
        "recovered",
        "rolled_back",
        "resumed",
        "held",
        "base_error",
        "drift",
        "test",
    ];
}

/// One notifier's place in the log and the state of its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OutboxRecord {
    /// The notifier's name.
    pub name: String,
    /// The sequence number of the last event delivered (or dropped, or
    /// not for it): the next one to deliver is the first after it.
    pub cursor: u64,
    /// Failed attempts at the event after `cursor` so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the first attempt at the event after `cursor` failed.
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// When the next attempt is due.
    #[serde(default)]
    pub next_attempt: Option<DateTime<Utc>>,
    /// When a delivery last succeeded.
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    /// The last delivery error (never holds a secret).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Events dropped after 24 hours of failed attempts.
    #[serde(default)]
    pub dropped: u64,
    /// Events delivered.
    #[serde(default)]
    pub delivered: u64,
}

/// Appends `kind` to the global log inside a transaction that has the
/// `log` and `meta` trees: the next sequence number is read from and
/// written back to `meta` in the same transaction, so numbers are never
/// skipped nor reused. Returns the sequence number.
pub(crate) fn log_append(
    log: &TransactionalTree,
    meta: &TransactionalTree,
    image: Option<&str>,
    at: DateTime<Utc>,
    kind: LogKind,
) -> Result<u64, ConflictableTransactionError<String>> {
    let seq = read_seq(meta.get(SEQ_KEY)?.as_deref()) + 1;
    let event = LogEvent {
        seq,
        at,
        image: image.map(str::to_owned),
        kind,
    };
    let bytes = serde_json::to_vec(&event)
        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
    log.insert(&seq.to_be_bytes(), bytes)?;
    meta.insert(SEQ_KEY, &seq.to_be_bytes())?;
    Ok(seq)
}

fn read_seq(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Waits for writes to the global log (or to the jobs): a handle on
/// sled's subscription, so every writer wakes it, whoever it is.
pub struct LogWatch(sled::Subscriber);

impl LogWatch {
    /// Waits for the next write; `false` when the store is gone.
    pub async fn changed(&mut self) -> bool {
        (&mut self.0).await.is_some()
    }
}

/// A job record as it was written, from [`Store::watch_jobs`].
pub struct JobWatch(sled::Subscriber);

impl JobWatch {
    /// The next job written (`None` when the store is gone); removals and
    /// undecodable values are skipped.
    pub async fn next(&mut self) -> Option<rebased_core::job::Job> {
        loop {
            match (&mut self.0).await? {
                sled::Event::Insert { value, .. } => {
                    if let Ok(job) = serde_json::from_slice(&value) {
                        return Some(job);
                    }
                }
                sled::Event::Remove { .. } => {}
            }
        }
    }
}

impl Store {
    /// The last sequence number given out (0: none yet): where a notifier
    /// added now starts.
    pub fn log_end(&self) -> Result<u64, StateError> {
        let v = self.meta.get(SEQ_KEY).map_err(|source| StateError::Db {
            what: "the event log's sequence".to_owned(),
            source,
        })?;
        Ok(read_seq(v.as_deref()))
    }

    /// This database's log id: fixed when the log is first used, so a
    /// delivery id (`<log id>-<seq>`) names one event of one store for good.
    pub fn log_id(&self) -> Result<String, StateError> {
        let what = "the event log's id";
        let db = |source| StateError::Db {
            what: what.to_owned(),
            source,
        };
        if let Some(v) = self.meta.get(ID_KEY).map_err(db)? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let nanos = Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .unsigned_abs();
        let id = format!("{:x}{:04x}", nanos, std::process::id() & 0xffff);
        // Two first callers at once: the first write wins.
        let _ = self
            .meta
            .compare_and_swap(ID_KEY, None as Option<&[u8]>, Some(id.as_bytes()))
            .map_err(db)?;
        let v = self.meta.get(ID_KEY).map_err(db)?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or(id))
    }

    /// The events with a sequence number above `after`, oldest first, at
    /// most `limit` of them.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<LogEvent>, StateError> {
        let what = "the event log";
        let start = after.saturating_add(1);
        self.log
            .range(start.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(|source| StateError::Db {
                    what: what.to_owned(),
                    source,
                })?;
                decode(&v, what)
            })
            .collect()
    }

    /// The oldest sequence number still in the log (`None`: empty).
    pub fn log_start(&self) -> Result<Option<u64>, StateError> {
        let first = self.log.first().map_err(|source| StateError::Db {
            what: "the event log".to_owned(),
            source,
        })?;
        Ok(first.map(|(k, _)| read_seq(Some(&k))))
    }

    /// A handle that wakes on every write to the global log.
    pub fn watch_log(&self) -> LogWatch {
        LogWatch(self.log.watch_prefix(Vec::<u8>::new()))
    }

    /// A handle that yields every job record as it is written.
    pub fn watch_jobs(&self) -> JobWatch {
        JobWatch(self.jobs.watch_prefix(Vec::<u8>::new()))
    }

    /// Appends one event that is a change of nothing else (a notifier's
    /// test), flushed; its sequence number.
    pub fn log_event(&self, image: Option<&str>, kind: LogKind) -> Result<u64, StateError> {
        let _changed = self.changing();
        let what = format!("logging a {} event", kind.name());
        let now = Utc::now();
        let result = (&self.log, &self.meta)
            .transaction(|(log, meta)| log_append(log, meta, image, now, kind.clone()));
        let seq = match result {
            Ok(seq) => seq,
            Err(e) => return self.committed(Err(e), what).map(|()| 0),
        };
        self.committed(Ok(()), what)?;
        self.trim_log()?;
        Ok(seq)
    }

    /// Drops the log's entries beyond the newest [`KEEP_LOG`].
    pub(crate) fn trim_log(&self) -> Result<(), StateError> {
        let what = "trimming the event log";
        let db = |source| StateError::Db {
            what: what.to_owned(),
            source,
        };
        let end = self.log_end()?;
        if end <= KEEP_LOG {
            return Ok(());
        }
        let keep_from = end - KEEP_LOG + 1;
        let old: Vec<sled::IVec> = self
            .log
            .range(..keep_from.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(db)?;
        for k in old {
            self.log.remove(k).map_err(db)?;
        }
        Ok(())
    }

    /// The outbox record of notifier `name`.
    pub fn outbox(&self, name: &str) -> Result<Option<OutboxRecord>, StateError> {
        crate::get(&self.outbox, name.as_bytes(), &format!("outbox of {name}"))
    }

    /// Every outbox record, by notifier name.
    pub fn outboxes(&self) -> Result<Vec<OutboxRecord>, StateError> {
        crate::all(&self.outbox, "outboxes")
    }

    /// Stores notifier `record.name`'s outbox record, flushed.
    pub fn put_outbox(&self, record: &OutboxRecord) -> Result<(), StateError> {
        let what = format!("outbox of {}", record.name);
        let bytes = encode(record, &what)?;
        self.outbox
            .insert(record.name.as_bytes(), bytes)
            .map_err(|source| StateError::Db {
                what: what.clone(),
                source,
            })?;
        self.flush(&what)
    }

    /// Drops notifier `name`'s outbox (it was removed from the config);
    /// the record it had, if any.
    pub fn drop_outbox(&self, name: &str) -> Result<Option<OutboxRecord>, StateError> {
        let what = format!("outbox of {name}");
        let old = self
            .outbox
            .remove(name.as_bytes())
            .map_err(|source| StateError::Db {
                what: what.clone(),
                source,
            })?;
        self.flush(&what)?;
        old.map(|b| decode(&b, &what)).transpose()
    }
}
