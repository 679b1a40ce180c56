//! The persistent state of rebased, behind a narrow typed API.
//!
//! Only this crate knows sled. Values are JSON documents, one per key, in
//! three trees: `bases` (reference -> [`BaseRecord`]), `images` (name ->
//! [`ImageRecord`]) and `versions` (name, NUL, sortable version ->
//! [`VersionRecord`]). Publishing a version and marking its predecessor
//! superseded is one transaction, flushed before it returns.
//!
//! The ledger is append-only: every publish, supersession, rollback, hold
//! and resume is a [`LedgerEvent`] in the `events` tree (name, NUL,
//! sequence number -> event), written in the same transaction as the
//! change and never rewritten. Each image's events are numbered from 1 by
//! [`ImageRecord::last_event`]. A version's `superseded_by`, `superseded_at`
//! and `reason` are the derived current view (the latest supersession);
//! [`Store::supersessions`] gives every one from the events.
//!
//! Beside the per-image ledger, the global event log (`log` tree, global
//! sequence -> [`LogEvent`]) holds what operators are told of, each entry
//! written in the transaction of its change; the `outbox` tree holds each
//! notifier's cursor into it (see the `log` module).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rebased_core::job::{Job, JobId};
use rebased_core::{Digest, ImageState, Trigger, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

mod log;

use log::log_append;
pub use log::{JobWatch, LogEvent, LogKind, LogWatch, OutboxRecord, KEEP_LOG};

/// A state store error, naming what was being read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened.
    #[error("cannot open state database {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// The cause.
        source: sled::Error,
    },
    /// Another process holds the database's lock (another rebased on the
    /// same state directory).
    #[error("state database {path} is locked by another process")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// A read or write failed.
    #[error("state {what}: {source}")]
    Db {
        /// What was being accessed.
        what: String,
        /// The cause.
        source: sled::Error,
    },
    /// A stored value does not decode.
    #[error("state {what}: stored value does not decode: {source}")]
    Decode {
        /// What was being read.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// The database was written by another schema version.
    #[error("state database {path} has schema version {found}; this rebased reads version {expected}: move it aside to rebuild the ledger from the registry")]
    Schema {
        /// The database directory.
        path: PathBuf,
        /// The version found.
        found: String,
        /// The version this build reads.
        expected: u32,
    },
    /// A write was refused because it would break an invariant.
    #[error("state {what}: {reason}")]
    Invariant {
        /// What was being written.
        what: String,
        /// Why it was refused.
        reason: String,
    },
}

/// What is known about one base reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The normalised reference.
    pub reference: String,
    /// The digest last seen.
    pub digest: Option<Digest>,
    /// When it was last checked.
    pub checked_at: Option<DateTime<Utc>>,
    /// When the digest last changed.
    pub changed_at: Option<DateTime<Utc>>,
    /// The error of the last check, if it failed.
    pub error: Option<String>,
    /// A different digest seen but not yet settled, and since when.
    #[serde(default)]
    pub pending: Option<(Digest, DateTime<Utc>)>,
    /// For an index: the child manifest digest of each platform (`os/arch[/variant]`).
    #[serde(default)]
    pub platforms: BTreeMap<String, Digest>,
    /// The registry's `ratelimit-remaining` at the last check, when it said.
    #[serde(default)]
    pub rate_limit_remaining: Option<u64>,
}

impl BaseRecord {
    /// A record for a base never checked.
    pub fn new(reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            digest: None,
            checked_at: None,
            changed_at: None,
            error: None,
            pending: None,
            platforms: BTreeMap::new(),
            rate_limit_remaining: None,
        }
    }
}

/// What is known about one source: a git repository at a ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The key: the repository's URL and the ref (`URL#REF`, the ref
    /// `HEAD` when none is named).
    pub key: String,
    /// The URL without credentials.
    pub url: String,
    /// The ref.
    pub reference: String,
    /// The commit that held: what builds use.
    pub commit: Option<String>,
    /// A different commit seen but not yet settled, and since when.
    #[serde(default)]
    pub pending: Option<(String, DateTime<Utc>)>,
    /// When it was last looked up.
    pub checked_at: Option<DateTime<Utc>>,
    /// When the commit last changed.
    pub changed_at: Option<DateTime<Utc>>,
    /// The error of the last look-up or checkout, if it failed.
    pub error: Option<String>,
}

impl SourceRecord {
    /// A record for a source never looked up.
    pub fn new(key: &str, url: &str, reference: &str) -> Self {
        Self {
            key: key.to_owned(),
            url: url.to_owned(),
            reference: reference.to_owned(),
            commit: None,
            pending: None,
            checked_at: None,
            changed_at: None,
            error: None,
        }
    }
}

/// One image's standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image's name.
    pub name: String,
    /// Its current (newest) published version.
    pub current: Option<Version>,
    /// Where it stands.
    pub state: ImageState,
    /// Why the last build failed.
    pub last_error: Option<String>,
    /// When this record last changed.
    pub updated_at: DateTime<Utc>,
    /// The inputs (base -> digest) of the builds that gave up: a failing
    /// image is not retried until its inputs differ.
    #[serde(default)]
    pub failed_inputs: Option<BTreeMap<String, Digest>>,
    /// With `failed_inputs`: the index bases' child digests of the image's
    /// platforms (a new architecture upstream does not retry a failing image).
    #[serde(default)]
    pub failed_platforms: BTreeMap<String, BTreeMap<String, Digest>>,
    /// With `failed_inputs`: the source revision the failed job had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_source: Option<String>,
    /// The ledger was read from the registry (or found empty there): the
    /// registry's versions need not be imported again.
    #[serde(default)]
    pub ledger_synced: bool,
    /// The sequence number of the image's newest [`LedgerEvent`] (0: none yet).
    #[serde(default)]
    pub last_event: u64,
    /// Since when the image is failing: set when it turns failing, kept
    /// through the retries of new inputs, cleared when it is fresh again
    /// (a `recovered` event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
}

impl ImageRecord {
    /// A fresh record for an image never seen before.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            current: None,
            state: ImageState::Stale,
            last_error: None,
            updated_at: Utc::now(),
            failed_inputs: None,
            failed_platforms: BTreeMap::new(),
            failed_source: None,
            ledger_synced: false,
            last_event: 0,
            failing_since: None,
        }
    }
}

/// How one base moved between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChange {
    /// The base reference.
    pub reference: String,
    /// Its digest in the superseded version (`None`: not a base then).
    pub before: Option<Digest>,
    /// Its digest in the new version.
    pub after: Digest,
    /// For an index base: which of the image's platforms' children moved
    /// (`linux/arm64: before -> after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<String>,
}

/// Why a version was superseded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// What caused the new build.
    pub trigger: Trigger,
    /// Every base, before and after.
    pub bases: Vec<BaseChange>,
    /// The source's revision, before and after, when the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceChange>,
}

/// The source's move between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceChange {
    /// The revision of the superseded version (`None`: none recorded).
    pub before: Option<String>,
    /// The revision of the new version.
    pub after: String,
}

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version.
    pub version: Version,
    /// The manifest digest of the version tag.
    pub digest: Digest,
    /// When it was built.
    pub built_at: DateTime<Utc>,
    /// Its inputs: every base reference and the digest it was built from.
    pub bases: BTreeMap<String, Digest>,
    /// For bases that are indexes: base -> platform -> child digest, for
    /// the platforms the image builds.
    #[serde(default)]
    pub platforms: BTreeMap<String, BTreeMap<String, Digest>>,
    /// When the version is an index: platform -> its child's digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<String, Digest>,
    /// What caused the build.
    pub trigger: Trigger,
    /// The version that replaced it.
    pub superseded_by: Option<Version>,
    /// When it was replaced.
    pub superseded_at: Option<DateTime<Utc>>,
    /// Why it was replaced.
    pub reason: Option<Reason>,
    /// The version it replaced (`io.rebased.supersedes`).
    #[serde(default)]
    pub supersedes: Option<Version>,
    /// The job that published it (absent for versions read back from the registry).
    #[serde(default)]
    pub job: Option<JobId>,
    /// The source's revision it was built from: the commit of a git
    /// context (`org.opencontainers.image.revision`), the content hash of
    /// a watched local one (`io.rebased.context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its cosign signature, when it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRecord>,
}

impl VersionRecord {
    /// A version built now from `bases` by `trigger`: not superseded, no
    /// job, source or signature recorded yet.
    pub fn new(
        version: Version,
        digest: Digest,
        bases: BTreeMap<String, Digest>,
        trigger: Trigger,
    ) -> Self {
        Self {
            version,
            digest,
            built_at: Utc::now(),
            bases,
            platforms: BTreeMap::new(),
            children: BTreeMap::new(),
            trigger,
            superseded_by: None,
            superseded_at: None,
            reason: None,
            supersedes: None,
            job: None,
            source: None,
            signature: None,
        }
    }
}

/// A version's cosign signature (and attestations) as pushed: what the
/// audit checks. Holds the public key only; the private key is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    /// The signing key's public half (PKIX PEM).
    pub public_key: String,
    /// Its fingerprint (`sha256:` of the SPKI DER).
    pub key: String,
    /// The `.sig` manifest of the version's digest.
    pub manifest: Digest,
    /// For an index: each child's digest -> the `.sig` manifest of it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<Digest, Digest>,
    /// The `.att` manifest, when attestations were pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestations: Option<Digest>,
    /// When it was signed.
    pub at: DateTime<Utc>,
}

/// What an audit found wrong with one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The version tag points at another manifest.
    VersionTagMoved,
    /// The version tag is gone.
    VersionTagMissing,
    /// A floating tag points elsewhere than the ledger says (or is gone).
    FloatingTagMoved,
    /// The signature tag is gone.
    SignatureMissing,
    /// The signature is there but does not verify.
    SignatureInvalid,
}

impl DriftKind {
    /// The snake_case name (metrics label, API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VersionTagMoved => "version_tag_moved",
            Self::VersionTagMissing => "version_tag_missing",
            Self::FloatingTagMoved => "floating_tag_moved",
            Self::SignatureMissing => "signature_missing",
            Self::SignatureInvalid => "signature_invalid",
        }
    }
}

/// One audit finding: a tag that is not what the ledger says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What is wrong.
    pub kind: DriftKind,
    /// The version concerned.
    pub version: Version,
    /// The tag looked at.
    pub tag: String,
    /// What the ledger says it should be (a digest, or "a signature by KEY").
    pub expected: String,
    /// What the registry has (`None`: nothing).
    pub found: Option<String>,
    /// What the audit did about it (`None`: nothing, or no repair asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
}

/// The last audit of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Versions checked.
    pub versions: usize,
    /// What it found (empty: every tag as the ledger says).
    pub findings: Vec<Finding>,
    /// The versions it could not check, and why (a registry unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// An operator moved an image's floating tags back to an earlier version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// The version that was current.
    pub from: Option<Version>,
    /// The version the floating tags point at again.
    pub to: Version,
    /// Its digest.
    pub digest: Digest,
}

/// One change of an image's ledger, kept for good (trimmed only by
/// [`KEEP_EVENTS`], oldest first). `(image, seq)` identifies it; `seq`
/// grows by one with every event of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    /// The image.
    pub image: String,
    /// Its number among the image's events, from 1.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What a [`LedgerEvent`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A version was published (or re-recorded).
    Published {
        /// The version.
        version: Version,
        /// Its manifest digest.
        digest: Digest,
        /// The version it replaced.
        supersedes: Option<Version>,
        /// What caused the build.
        trigger: Trigger,
        /// The job that published it.
        job: Option<JobId>,
    },
    /// A version stopped being current: a newer one was published, or a
    /// rollback went back to an earlier one.
    Superseded {
        /// The version superseded.
        version: Version,
        /// The version current after it.
        by: Version,
        /// Why.
        reason: Reason,
    },
    /// The floating tags were moved back.
    RolledBack {
        /// The version that was current.
        from: Option<Version>,
        /// The version current again.
        to: Version,
        /// Its digest.
        digest: Digest,
    },
    /// The image was held: nothing builds it until it is resumed.
    Held {
        /// Why.
        reason: String,
    },
    /// A hold ended.
    Resumed,
    /// An audit found a tag that is not what the ledger says.
    Drift {
        /// The finding (with the repair, when one was made).
        finding: Finding,
    },
}

/// One time a version was superseded, from the ledger's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supersession {
    /// The event's sequence number.
    pub seq: u64,
    /// The version current after it.
    pub by: Version,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: Reason,
}

/// The store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    bases: sled::Tree,
    sources: sled::Tree,
    images: sled::Tree,
    versions: sled::Tree,
    jobs: sled::Tree,
    rollbacks: sled::Tree,
    events: sled::Tree,
    audits: sled::Tree,
    meta: sled::Tree,
    log: sled::Tree,
    outbox: sled::Tree,
    /// Bumped after every write (see [`Store::generation`]).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Bumps the store's generation when dropped, so at the end of a write,
/// whichever way it ends.
struct Changed<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// Versions kept in the ledger per image; older ones are dropped (the
/// registry keeps them). The highest and the current are always kept.
pub const KEEP_VERSIONS: usize = 1000;
/// Rollback events kept per image.
pub const KEEP_ROLLBACKS: usize = 100;
/// Ledger events kept per image: enough for the publishes and
/// supersessions of [`KEEP_VERSIONS`] versions and the events of
/// [`KEEP_ROLLBACKS`] rollbacks (rollback, supersession, hold, resume).
pub const KEEP_EVENTS: usize = 2 * KEEP_VERSIONS + 4 * KEEP_ROLLBACKS;

/// sled's page cache. Its default is 1 GiB, and at 10,000 images the
/// store then holds 15 MB of RSS after start-up against 9 MB with 1 MiB
/// (`examples/import_rss.rs`); the daemon's reads (a status query, a poll
/// cycle) measured no slower with the small cache (BENCHMARKS.md).
const CACHE_BYTES: u64 = 1 << 20;

/// The layout version of the database; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let open_err = |source| StateError::Open {
            path: dir.to_owned(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                // sled words the lock's EWOULDBLOCK into an io::Error of its own.
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StateError::Locked {
                        path: dir.to_owned(),
                    }
                }
                e => open_err(e),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let meta = tree("meta")?;
        match meta.get("schema").map_err(open_err)? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(open_err)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => {}
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(|b| u32::from_be_bytes(b).to_string())
                    .unwrap_or_else(|_| format!("{:?}", v.as_ref()));
                return Err(StateError::Schema {
                    path: dir.to_owned(),
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
        }
        Ok(Self {
            rollbacks: tree("rollbacks")?,
            events: tree("events")?,
            audits: tree("audits")?,
            bases: tree("bases")?,
            sources: tree("sources")?,
            images: tree("images")?,
            versions: tree("versions")?,
            jobs: tree("jobs")?,
            log: tree("log")?,
            outbox: tree("outbox")?,
            meta,
            db,
            generation: Default::default(),
        })
    }

    /// A number that changes after every write through this store (and
    /// its clones): a reader that saw the same generation before and after
    /// reading knows nothing was written meanwhile, and one that cached an
    /// answer under a generation knows it is stale when the number moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changing(&self) -> Changed<'_> {
        Changed(&self.generation)
    }

    /// The record of base `reference`.
    pub fn base(&self, reference: &str) -> Result<Option<BaseRecord>, StateError> {
        get(
            &self.bases,
            reference.as_bytes(),
            &format!("base {reference}"),
        )
    }

    /// Every base record, ordered by reference.
    pub fn bases(&self) -> Result<Vec<BaseRecord>, StateError> {
        all(&self.bases, "bases")
    }

    /// Stores a base record.
    pub fn put_base(&self, record: &BaseRecord) -> Result<(), StateError> {
        let _changed = self.changing();
        put(
            &self.bases,
            record.reference.as_bytes(),
            record,
            &format!("base {}", record.reference),
        )
    }

    /// The record of source `key`.
    pub fn source(&self, key: &str) -> Result<Option<SourceRecord>, StateError> {
        get(&self.sources, key.as_bytes(), &format!("source {key}"))
    }

    /// Every source record, ordered by key.
    pub fn sources(&self) -> Result<Vec<SourceRecord>, StateError> {
        all(&self.sources, "sources")
    }

    /// Stores a source record.
    pub fn put_source(&self, record: &SourceRecord) -> Result<(), StateError> {
        let _changed = self.changing();
        put(
            &self.sources,
            record.key.as_bytes(),
            record,
            &format!("source {}", record.key),
        )
    }

    /// The record of image `name`.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StateError> {
        get(&self.images, name.as_bytes(), &format!("image {name}"))
    }

    /// Overwrites image `name`'s record with bytes that do not decode. For
    /// tests only: what the callers do with an unreadable record.
    #[doc(hidden)]
    pub fn damage_image_record(&self, name: &str) -> Result<(), StateError> {
        let _changed = self.changing();
        self.images
            .insert(name.as_bytes(), &b"\xff not a record"[..])
            .map(drop)
            .map_err(|source| StateError::Db {
                what: format!("image {name}"),
                source,
            })
    }

    /// Changes image `name`'s record atomically (a fresh record if none),
    /// so concurrent writers (a publish, a state change) never undo each
    /// other. A change into `failing` logs a `failing` event, one out of it
    /// into `fresh` a `recovered` event, in the same transaction.
    pub fn update_image(
        &self,
        name: &str,
        f: impl Fn(&mut ImageRecord),
    ) -> Result<ImageRecord, StateError> {
        self.update_image_logged(name, f, None)
    }

    /// [`Store::update_image`] for job `job` that gave up with `error`: a
    /// `failed` event is logged with the change (before the `failing` one
    /// it may make).
    pub fn job_failed(
        &self,
        name: &str,
        job: Option<JobId>,
        error: &str,
        f: impl Fn(&mut ImageRecord),
    ) -> Result<ImageRecord, StateError> {
        self.update_image_logged(name, f, Some((job, error)))
    }

    fn update_image_logged(
        &self,
        name: &str,
        f: impl Fn(&mut ImageRecord),
        failed: Option<(Option<JobId>, &str)>,
    ) -> Result<ImageRecord, StateError> {
        let _changed = self.changing();
        let what = format!("image {name}");
        // Most changes log nothing (a state that stays on the same side of
        // `failing`): one compare-and-swap of the record, as cheap as it
        // was before the log. The swap gives up, unchanged, on a change
        // that would log, which then takes the transaction below.
        if failed.is_none() {
            if let Some(rec) = self.update_image_unlogged(name, &f, &what)? {
                return Ok(rec);
            }
        }
        let result = (&self.images, &self.log, &self.meta).transaction(|(images, log, meta)| {
            let mut rec = match images.get(name.as_bytes())? {
                Some(b) => serde_json::from_slice::<ImageRecord>(&b)
                    .map_err(ConflictableTransactionError::Abort)?,
                None => ImageRecord::new(name),
            };
            let before = rec.state;
            f(&mut rec);
            let now = Utc::now();
            rec.updated_at = now;
            let job = failed.and_then(|(job, _)| job);
            if let Some((job, error)) = failed {
                log_append(
                    log,
                    meta,
                    Some(name),
                    now,
                    LogKind::Failed {
                        job,
                        error: error.to_owned(),
                    },
                )
                .map_err(abort_text)?;
            }
            transition(log, meta, before, &mut rec, now, job).map_err(abort_text)?;
            let bytes = serde_json::to_vec(&rec).map_err(ConflictableTransactionError::Abort)?;
            images.insert(name.as_bytes(), bytes)?;
            Ok(rec)
        });
        match result {
            Ok(rec) => {
                self.trim_log()?;
                Ok(rec)
            }
            Err(TransactionError::Abort(source)) => Err(StateError::Decode { what, source }),
            Err(TransactionError::Storage(source)) => Err(StateError::Db { what, source }),
        }
    }

    /// [`Store::update_image_logged`]'s swap for a change that logs
    /// nothing: `None` (and nothing written) when the change would log.
    fn update_image_unlogged(
        &self,
        name: &str,
        f: &impl Fn(&mut ImageRecord),
        what: &str,
    ) -> Result<Option<ImageRecord>, StateError> {
        let mut decode_error = None;
        let mut logs = false;
        let new = self
            .images
            .update_and_fetch(name.as_bytes(), |old| {
                let mut rec = match old.map(serde_json::from_slice::<ImageRecord>) {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        decode_error = Some(e);
                        return old.map(<[u8]>::to_vec);
                    }
                    None => ImageRecord::new(name),
                };
                let before = rec.state;
                f(&mut rec);
                logs = match rec.state {
                    ImageState::Failing if rec.failing_since.is_none() => {
                        if before == ImageState::Failing {
                            // Failing before this field existed: not news.
                            rec.failing_since = Some(Utc::now());
                            false
                        } else {
                            true
                        }
                    }
                    ImageState::Fresh => rec.failing_since.is_some(),
                    _ => false,
                };
                if logs {
                    return old.map(<[u8]>::to_vec);
                }
                rec.updated_at = Utc::now();
                serde_json::to_vec(&rec)
                    .ok()
                    .or_else(|| old.map(<[u8]>::to_vec))
            })
            .map_err(|source| StateError::Db {
                what: what.to_owned(),
                source,
            })?;
        if let Some(source) = decode_error {
            return Err(StateError::Decode {
                what: what.to_owned(),
                source,
            });
        }
        if logs {
            return Ok(None);
        }
        match new {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| StateError::Decode {
                    what: what.to_owned(),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Stores base record `record` and, in the same transaction, a
    /// `base_error` event with its error (the caller says it is new).
    pub fn base_failed(&self, record: &BaseRecord) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("base {}", record.reference);
        let bytes = encode(record, &what)?;
        let error = record.error.clone().unwrap_or_default();
        let result = (&self.bases, &self.log, &self.meta).transaction(|(bases, log, meta)| {
            bases.insert(record.reference.as_bytes(), bytes.clone())?;
            log_append(
                log,
                meta,
                None,
                Utc::now(),
                LogKind::BaseError {
                    base: record.reference.clone(),
                    error: error.clone(),
                },
            )?;
            Ok(())
        });
        self.committed(result, what)?;
        self.trim_log()
    }

    /// Every version of image `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StateError> {
        of_image(&self.versions, name, &format!("versions of {name}"))
    }

    /// One version of image `name`.
    pub fn version(
        &self,
        name: &str,
        version: &Version,
    ) -> Result<Option<VersionRecord>, StateError> {
        get(
            &self.versions,
            &version_key(name, version),
            &format!("version {name} {version}"),
        )
    }

    /// Records `new` as published for image `name`, in one transaction: the
    /// version is stored, the previous current version (if any) is marked
    /// superseded by it with `reason`, and the image's current version moves.
    /// Refuses to overwrite an existing version with another digest.
    pub fn publish(
        &self,
        name: &str,
        new: &VersionRecord,
        reason: Option<Reason>,
    ) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("publish {name} {}", new.version);
        let new_key = version_key(name, &new.version);
        let new_bytes = encode(new, &what)?;
        let result = (
            &self.images,
            &self.versions,
            &self.events,
            &self.log,
            &self.meta,
        )
            .transaction(|(images, versions, events, log, meta)| {
                let abort = |reason: String| ConflictableTransactionError::Abort(reason);
                let mut known = false;
                if let Some(existing) = versions.get(&new_key)? {
                    let existing: VersionRecord = serde_json::from_slice(&existing)
                        .map_err(|e| abort(format!("stored version does not decode: {e}")))?;
                    if existing.digest != new.digest {
                        return Err(abort(format!(
                            "version {} is already recorded with digest {}",
                            new.version, existing.digest
                        )));
                    }
                    known = true;
                }
                let mut image: ImageRecord = match images.get(name.as_bytes())? {
                    Some(b) => serde_json::from_slice(&b)
                        .map_err(|e| abort(format!("image record does not decode: {e}")))?,
                    None => ImageRecord::new(name),
                };
                if !known {
                    append(
                        events,
                        &mut image,
                        new.built_at,
                        EventKind::Published {
                            version: new.version,
                            digest: new.digest.clone(),
                            supersedes: new.supersedes,
                            trigger: new.trigger,
                            job: new.job,
                        },
                    )?;
                }
                let mut previous = new.supersedes;
                let mut why_logged = reason.clone();
                if let Some(prev) = image.current.filter(|p| *p != new.version) {
                    let prev_key = version_key(name, &prev);
                    if let Some(b) = versions.get(&prev_key)? {
                        let mut prev_rec: VersionRecord = serde_json::from_slice(&b)
                            .map_err(|e| abort(format!("stored version does not decode: {e}")))?;
                        let why = reason.clone().unwrap_or(Reason {
                            trigger: new.trigger,
                            bases: Vec::new(),
                            source: None,
                        });
                        previous = Some(prev);
                        why_logged = Some(why.clone());
                        // The record's fields are the current view; the
                        // event keeps this supersession for good.
                        prev_rec.superseded_by = Some(new.version);
                        prev_rec.superseded_at = Some(new.built_at);
                        prev_rec.reason = reason.clone();
                        let bytes =
                            serde_json::to_vec(&prev_rec).map_err(|e| abort(e.to_string()))?;
                        versions.insert(prev_key, bytes)?;
                        append(
                            events,
                            &mut image,
                            new.built_at,
                            EventKind::Superseded {
                                version: prev,
                                by: new.version,
                                reason: why,
                            },
                        )?;
                    }
                }
                versions.insert(new_key.clone(), new_bytes.clone())?;
                if !known {
                    log_append(
                        log,
                        meta,
                        Some(name),
                        new.built_at,
                        LogKind::Published {
                            version: new.version,
                            digest: new.digest.clone(),
                            previous_version: previous,
                            reason: why_logged,
                            trigger: new.trigger,
                            job: new.job,
                        },
                    )?;
                }
                let before = image.state;
                image.current = Some(new.version);
                image.ledger_synced = true;
                if image.state != ImageState::Held {
                    image.state = ImageState::Fresh;
                }
                image.last_error = None;
                image.failed_inputs = None;
                image.failed_platforms.clear();
                image.failed_source = None;
                image.updated_at = Utc::now();
                transition(log, meta, before, &mut image, new.built_at, new.job)?;
                let bytes = serde_json::to_vec(&image).map_err(|e| abort(e.to_string()))?;
                images.insert(name.as_bytes(), bytes)?;
                Ok(())
            });
        self.committed(result, what)?;
        self.trim_log()?;
        self.trim(&self.versions, name, KEEP_VERSIONS, Some(new.version))?;
        self.trim(&self.events, name, KEEP_EVENTS, None)
    }

    /// Drops the oldest entries of image `name` in `tree` beyond `keep`
    /// (never the version `spare`), then flushes.
    fn trim(
        &self,
        tree: &sled::Tree,
        name: &str,
        keep: usize,
        spare: Option<Version>,
    ) -> Result<(), StateError> {
        let what = format!("trimming the history of {name}");
        let db = |source| StateError::Db {
            what: what.clone(),
            source,
        };
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(image_prefix(name))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(db)?;
        let excess = keys.len().saturating_sub(keep);
        if excess == 0 {
            return Ok(());
        }
        let spare = spare.map(|v| version_key(name, &v));
        let current = self
            .image(name)?
            .and_then(|i| i.current)
            .map(|v| version_key(name, &v));
        for k in keys.iter().take(excess) {
            let k = k.as_ref();
            if Some(k) == spare.as_deref() || Some(k) == current.as_deref() {
                continue;
            }
            tree.remove(k).map_err(db)?;
        }
        self.flush(&what)
    }

    /// Stores a job (queued jobs survive restarts), flushed before returning.
    pub fn put_job(&self, job: &Job) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("job {}", job.id);
        put(&self.jobs, &job.id.to_be_bytes(), job, &what)?;
        self.flush(&what)
    }

    /// Every stored job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StateError> {
        all(&self.jobs, "jobs")
    }

    /// Forgets finished jobs.
    pub fn delete_jobs(&self, ids: &[JobId]) -> Result<(), StateError> {
        let _changed = self.changing();
        for id in ids {
            self.jobs
                .remove(id.to_be_bytes())
                .map_err(|source| StateError::Db {
                    what: format!("job {id}"),
                    source,
                })?;
        }
        Ok(())
    }

    /// Records a rollback: the image's current version becomes `event.to`,
    /// the version rolled away from is superseded by it (trigger
    /// `rollback`), and the image is held.
    pub fn rollback(&self, name: &str, event: &RollbackEvent) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("rollback {name} to {}", event.to);
        let mut key = image_prefix(name);
        key.extend_from_slice(&event.at.timestamp_micros().to_be_bytes());
        let event_bytes = encode(event, &what)?;
        let result = (
            &self.images,
            &self.versions,
            &self.rollbacks,
            &self.events,
            &self.log,
            &self.meta,
        )
            .transaction(|(images, versions, rollbacks, events, log, meta)| {
                let abort = |reason: String| ConflictableTransactionError::Abort(reason);
                if versions.get(version_key(name, &event.to))?.is_none() {
                    return Err(abort(format!("version {} is not in the ledger", event.to)));
                }
                let mut image: ImageRecord = match images.get(name.as_bytes())? {
                    Some(b) => serde_json::from_slice(&b)
                        .map_err(|e| abort(format!("image record does not decode: {e}")))?,
                    None => return Err(abort("image has no ledger".to_owned())),
                };
                append(
                    events,
                    &mut image,
                    event.at,
                    EventKind::RolledBack {
                        from: event.from,
                        to: event.to,
                        digest: event.digest.clone(),
                    },
                )?;
                if let Some(from) = event.from.filter(|f| *f != event.to) {
                    let k = version_key(name, &from);
                    if let Some(b) = versions.get(&k)? {
                        let mut rec: VersionRecord = serde_json::from_slice(&b)
                            .map_err(|e| abort(format!("stored version does not decode: {e}")))?;
                        let reason = Reason {
                            trigger: Trigger::Rollback,
                            bases: Vec::new(),
                            source: None,
                        };
                        rec.superseded_by = Some(event.to);
                        rec.superseded_at = Some(event.at);
                        rec.reason = Some(reason.clone());
                        versions.insert(
                            k,
                            serde_json::to_vec(&rec).map_err(|e| abort(e.to_string()))?,
                        )?;
                        append(
                            events,
                            &mut image,
                            event.at,
                            EventKind::Superseded {
                                version: from,
                                by: event.to,
                                reason,
                            },
                        )?;
                    }
                }
                append(
                    events,
                    &mut image,
                    event.at,
                    EventKind::Held {
                        reason: format!("rolled back to {}", event.to),
                    },
                )?;
                log_append(
                    log,
                    meta,
                    Some(name),
                    event.at,
                    LogKind::RolledBack {
                        from: event.from,
                        to: event.to,
                        digest: event.digest.clone(),
                    },
                )?;
                log_append(
                    log,
                    meta,
                    Some(name),
                    event.at,
                    LogKind::Held {
                        reason: format!("rolled back to {}", event.to),
                    },
                )?;
                image.current = Some(event.to);
                image.state = ImageState::Held;
                image.last_error = None;
                // The operator's move ends a failing spell: a build that
                // fails after the resume is news again.
                image.failing_since = None;
                image.updated_at = event.at;
                images.insert(
                    name.as_bytes(),
                    serde_json::to_vec(&image).map_err(|e| abort(e.to_string()))?,
                )?;
                rollbacks.insert(key.clone(), event_bytes.clone())?;
                Ok(())
            });
        self.committed(result, what)?;
        self.trim_log()?;
        self.trim(&self.rollbacks, name, KEEP_ROLLBACKS, None)?;
        self.trim(&self.events, name, KEEP_EVENTS, None)
    }

    /// Ends the hold of image `name`: it is fresh again (the next decision
    /// says whether it is), and a [`EventKind::Resumed`] event is recorded.
    /// `Ok(None)` when the image is not held (nothing changes), else the
    /// record after.
    pub fn resume(&self, name: &str) -> Result<Option<ImageRecord>, StateError> {
        let _changed = self.changing();
        let what = format!("resume {name}");
        let mut after = None;
        let result = (&self.images, &self.events, &self.log, &self.meta).transaction(
            |(images, events, log, meta)| {
                let abort = |reason: String| ConflictableTransactionError::Abort(reason);
                let Some(b) = images.get(name.as_bytes())? else {
                    return Ok(None);
                };
                let mut image: ImageRecord = serde_json::from_slice(&b)
                    .map_err(|e| abort(format!("image record does not decode: {e}")))?;
                if image.state != ImageState::Held {
                    return Ok(None);
                }
                let now = Utc::now();
                append(events, &mut image, now, EventKind::Resumed)?;
                log_append(log, meta, Some(name), now, LogKind::Resumed)?;
                image.state = ImageState::Fresh;
                image.updated_at = now;
                images.insert(
                    name.as_bytes(),
                    serde_json::to_vec(&image).map_err(|e| abort(e.to_string()))?,
                )?;
                Ok(Some(image))
            },
        );
        let result = result.map(|r| {
            after = r;
        });
        self.committed(result, what)?;
        self.trim_log()?;
        self.trim(&self.events, name, KEEP_EVENTS, None)?;
        Ok(after)
    }

    /// Records the audit of image `name`: the record (replacing the last
    /// one), a [`EventKind::Drift`] event per finding, and each signature
    /// a repair pushed again or the audit found verifying on a version
    /// that had none recorded (`signatures`: version -> its new record),
    /// in one transaction.
    pub fn record_audit(
        &self,
        name: &str,
        audit: &AuditRecord,
        signatures: &[(Version, SignatureRecord)],
    ) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("audit of {name}");
        let bytes = encode(audit, &what)?;
        let result = (
            &self.images,
            &self.versions,
            &self.audits,
            &self.events,
            &self.log,
            &self.meta,
        )
            .transaction(|(images, versions, audits, events, log, meta)| {
                let abort = |reason: String| ConflictableTransactionError::Abort(reason);
                let mut image: ImageRecord = match images.get(name.as_bytes())? {
                    Some(b) => serde_json::from_slice(&b)
                        .map_err(|e| abort(format!("image record does not decode: {e}")))?,
                    None => ImageRecord::new(name),
                };
                for (version, sig) in signatures {
                    let k = version_key(name, version);
                    let Some(b) = versions.get(&k)? else {
                        return Err(abort(format!("version {version} is not in the ledger")));
                    };
                    let mut rec: VersionRecord = serde_json::from_slice(&b)
                        .map_err(|e| abort(format!("stored version does not decode: {e}")))?;
                    rec.signature = Some(sig.clone());
                    versions.insert(
                        k,
                        serde_json::to_vec(&rec).map_err(|e| abort(e.to_string()))?,
                    )?;
                }
                for finding in &audit.findings {
                    append(
                        events,
                        &mut image,
                        audit.at,
                        EventKind::Drift {
                            finding: finding.clone(),
                        },
                    )?;
                    log_append(
                        log,
                        meta,
                        Some(name),
                        audit.at,
                        LogKind::Drift {
                            finding: finding.clone(),
                        },
                    )?;
                }
                images.insert(
                    name.as_bytes(),
                    serde_json::to_vec(&image).map_err(|e| abort(e.to_string()))?,
                )?;
                audits.insert(name.as_bytes(), bytes.clone())?;
                Ok(())
            });
        self.committed(result, what)?;
        self.trim_log()?;
        self.trim(&self.events, name, KEEP_EVENTS, None)
    }

    /// The last audit of image `name`, if one ran.
    pub fn audit(&self, name: &str) -> Result<Option<AuditRecord>, StateError> {
        let what = format!("audit of {name}");
        match self.audits.get(name.as_bytes()) {
            Ok(Some(b)) => decode(&b, &what).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(StateError::Db { what, source }),
        }
    }

    /// Every image's last audit, by image name (one scan of the audits).
    pub fn audits(&self) -> Result<Vec<(String, AuditRecord)>, StateError> {
        let mut out = Vec::new();
        for item in self.audits.iter() {
            let (k, v) = item.map_err(|source| StateError::Db {
                what: "audits".to_owned(),
                source,
            })?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let what = format!("audit of {name}");
            out.push((name, decode(&v, &what)?));
        }
        Ok(out)
    }

    /// Every ledger event of image `name` still kept, oldest first.
    pub fn events(&self, name: &str) -> Result<Vec<LedgerEvent>, StateError> {
        of_image(&self.events, name, &format!("events of {name}"))
    }

    /// Every supersession of each of image `name`'s versions, oldest first,
    /// from the ledger's events.
    pub fn supersessions(
        &self,
        name: &str,
    ) -> Result<BTreeMap<Version, Vec<Supersession>>, StateError> {
        let mut out: BTreeMap<Version, Vec<Supersession>> = BTreeMap::new();
        for e in self.events(name)? {
            if let EventKind::Superseded {
                version,
                by,
                reason,
            } = e.kind
            {
                out.entry(version).or_default().push(Supersession {
                    seq: e.seq,
                    by,
                    at: e.at,
                    reason,
                });
            }
        }
        Ok(out)
    }

    /// Every rollback of image `name`, oldest first.
    pub fn rollbacks(&self, name: &str) -> Result<Vec<RollbackEvent>, StateError> {
        of_image(&self.rollbacks, name, &format!("rollbacks of {name}"))
    }

    /// Replaces the ledger of image `name` with `versions` read from the
    /// registry (recovery, or first sight of a repository that already
    /// holds versions); `current` becomes its current version.
    pub fn import(
        &self,
        name: &str,
        versions: &[VersionRecord],
        current: Option<Version>,
    ) -> Result<(), StateError> {
        let _changed = self.changing();
        let what = format!("import ledger of {name}");
        let result = (&self.images, &self.versions)
            .transaction(|(images, vtree)| import_into(images, vtree, name, versions, current));
        self.committed(result, what)
    }

    /// [`Store::import`] of several images in one transaction, flushed once
    /// (the start-up import of thousands of images: one disk sync per
    /// batch, not per image).
    pub fn import_many(&self, ledgers: &[ImportedLedger]) -> Result<(), StateError> {
        let _changed = self.changing();
        if ledgers.is_empty() {
            return Ok(());
        }
        let what = format!("import ledgers of {} images", ledgers.len());
        let result = (&self.images, &self.versions).transaction(|(images, vtree)| {
            for l in ledgers {
                import_into(images, vtree, &l.name, &l.versions, l.current)?;
            }
            Ok(())
        });
        self.committed(result, what)
    }

    /// Ends a transaction: flushed on success, else the abort reason or the
    /// storage error, named by `what`.
    fn committed(
        &self,
        result: Result<(), TransactionError<String>>,
        what: String,
    ) -> Result<(), StateError> {
        match result {
            Ok(()) => self.flush(&what),
            Err(TransactionError::Abort(reason)) => Err(StateError::Invariant { what, reason }),
            Err(TransactionError::Storage(source)) => Err(StateError::Db { what, source }),
        }
    }

    /// Writes everything to disk.
    pub fn flush(&self, what: &str) -> Result<(), StateError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| StateError::Db {
                what: what.to_owned(),
                source,
            })
    }
}

/// One image's ledger as read back from its repository.
#[derive(Debug, Clone)]
pub struct ImportedLedger {
    /// The image.
    pub name: String,
    /// Its versions.
    pub versions: Vec<VersionRecord>,
    /// The one the floating tags point at.
    pub current: Option<Version>,
}

/// The import of one ledger inside a transaction: versions the ledger
/// already knows are kept (they are more exact); the image's current
/// version is set only if it has none; the ledger is marked synced.
fn import_into(
    images: &sled::transaction::TransactionalTree,
    vtree: &sled::transaction::TransactionalTree,
    name: &str,
    versions: &[VersionRecord],
    current: Option<Version>,
) -> Result<(), ConflictableTransactionError<String>> {
    let abort = |reason: String| ConflictableTransactionError::Abort(reason);
    for v in versions {
        let key = version_key(name, &v.version);
        if vtree.get(&key)?.is_none() {
            let bytes = serde_json::to_vec(v).map_err(|e| abort(e.to_string()))?;
            vtree.insert(key, bytes)?;
        }
    }
    let mut image: ImageRecord = match images.get(name.as_bytes())? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| abort(format!("image record of {name} does not decode: {e}")))?,
        None => ImageRecord::new(name),
    };
    if image.current.is_none() {
        image.current = current;
    }
    image.ledger_synced = true;
    image.updated_at = Utc::now();
    images.insert(
        name.as_bytes(),
        serde_json::to_vec(&image).map_err(|e| abort(e.to_string()))?,
    )?;
    Ok(())
}

/// Appends an event to `image`'s ledger inside a transaction: the next
/// sequence number is taken from (and written back to) `image`, which the
/// caller stores in the same transaction.
fn append(
    events: &sled::transaction::TransactionalTree,
    image: &mut ImageRecord,
    at: DateTime<Utc>,
    kind: EventKind,
) -> Result<(), ConflictableTransactionError<String>> {
    let seq = image.last_event + 1;
    let event = LedgerEvent {
        image: image.name.clone(),
        seq,
        at,
        kind,
    };
    let bytes = serde_json::to_vec(&event)
        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
    events.insert(event_key(&image.name, seq), bytes)?;
    image.last_event = seq;
    Ok(())
}

/// Logs what a change of `image`'s state from `before` means: into
/// `failing` (not failing already) a `failing` event, out of a failing
/// spell into `fresh` a `recovered` one; keeps `failing_since` true.
fn transition(
    log: &sled::transaction::TransactionalTree,
    meta: &sled::transaction::TransactionalTree,
    before: ImageState,
    image: &mut ImageRecord,
    at: DateTime<Utc>,
    job: Option<JobId>,
) -> Result<(), ConflictableTransactionError<String>> {
    match image.state {
        ImageState::Failing if image.failing_since.is_none() => {
            image.failing_since = Some(at);
            // A record from before this field that was failing already
            // is not news.
            if before != ImageState::Failing {
                log_append(
                    log,
                    meta,
                    Some(&image.name),
                    at,
                    LogKind::Failing {
                        job,
                        error: image.last_error.clone(),
                    },
                )?;
            }
        }
        ImageState::Fresh if image.failing_since.is_some() => {
            image.failing_since = None;
            log_append(
                log,
                meta,
                Some(&image.name),
                at,
                LogKind::Recovered {
                    version: image.current,
                    job,
                },
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// A text abort of a nested step as the caller's abort type (an encoding
/// error: the only abort `log_append` makes).
fn abort_text(
    e: ConflictableTransactionError<String>,
) -> ConflictableTransactionError<serde_json::Error> {
    match e {
        ConflictableTransactionError::Abort(text) => {
            ConflictableTransactionError::Abort(serde_json::Error::io(std::io::Error::other(text)))
        }
        ConflictableTransactionError::Storage(e) => ConflictableTransactionError::Storage(e),
        ConflictableTransactionError::Conflict => ConflictableTransactionError::Conflict,
    }
}

/// An event's key: the image's prefix and the sequence number, big-endian
/// so that keys sort by sequence.
fn event_key(name: &str, seq: u64) -> Vec<u8> {
    let mut k = image_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Keys sort by image, then numerically by version.
/// Keys of an image's entries (versions, rollbacks) start with its name
/// and a NUL.
fn image_prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

/// Every entry of image `name` in `tree`, in key order.
fn of_image<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &str,
    what: &str,
) -> Result<Vec<T>, StateError> {
    tree.scan_prefix(image_prefix(name))
        .map(|kv| {
            let (_, v) = kv.map_err(|source| StateError::Db {
                what: what.to_owned(),
                source,
            })?;
            decode(&v, what)
        })
        .collect()
}

fn version_key(name: &str, v: &Version) -> Vec<u8> {
    let mut k = image_prefix(name);
    k.extend_from_slice(&v.major.to_be_bytes());
    k.extend_from_slice(&v.minor.to_be_bytes());
    k.extend_from_slice(&v.patch.to_be_bytes());
    match v.revision {
        None => k.push(0),
        Some(r) => {
            k.push(1);
            k.extend_from_slice(&r.to_be_bytes());
        }
    }
    k
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(|source| StateError::Decode {
        what: what.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Decode {
        what: what.to_owned(),
        source,
    })
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, StateError> {
    match tree.get(key) {
        Ok(Some(v)) => decode(&v, what).map(Some),
        Ok(None) => Ok(None),
        Err(source) => Err(StateError::Db {
            what: what.to_owned(),
            source,
        }),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, what: &str) -> Result<Vec<T>, StateError> {
    tree.iter()
        .map(|kv| {
            let (_, v) = kv.map_err(|source| StateError::Db {
                what: what.to_owned(),
                source,
            })?;
            decode(&v, what)
        })
        .collect()
}

fn put<T: Serialize>(
    tree: &sled::Tree,
    key: &[u8],
    value: &T,
    what: &str,
) -> Result<(), StateError> {
    let bytes = encode(value, what)?;
    tree.insert(key, bytes)
        .map(|_| ())
        .map_err(|source| StateError::Db {
            what: what.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store at `dir` again after the test dropped it: sled's
    /// flusher thread lets go of the directory's lock a moment after the
    /// last handle is dropped, so a reopen at once may find it still held.
    fn reopen(dir: &Path) -> Store {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Err(StateError::Locked { .. }) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r.expect("reopen"),
            }
        }
    }

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).expect("valid")
    }

    fn version(v: &str, d: char, base: char) -> VersionRecord {
        VersionRecord::new(
            Version::parse(v).expect("valid"),
            digest(d),
            BTreeMap::from([("docker.io/library/base:latest".to_owned(), digest(base))]),
            Trigger::Poll,
        )
    }

    #[test]
    fn audits_record_findings_drift_events_and_new_signatures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .publish("app", &version("1.0.0", 'a', 'b'), None)
            .expect("publish");
        // A record written before signatures existed still loads.
        let mut old = serde_json::to_value(version("1.0.0", 'a', 'b')).expect("json");
        old.as_object_mut().expect("object").remove("signature");
        let back: VersionRecord = serde_json::from_value(old).expect("old record");
        assert_eq!(back.signature, None);
        assert_eq!(store.audit("app").expect("audit"), None);
        let finding = Finding {
            kind: DriftKind::FloatingTagMoved,
            version: Version::parse("1.0.0").expect("v"),
            tag: "latest".into(),
            expected: digest('a').to_string(),
            found: Some(digest('c').to_string()),
            repaired: Some("moved back".into()),
        };
        let audit = AuditRecord {
            at: Utc::now(),
            versions: 1,
            findings: vec![finding.clone()],
            errors: Vec::new(),
        };
        let sig = SignatureRecord {
            public_key: "PEM".into(),
            key: "sha256:k".into(),
            manifest: digest('d'),
            children: BTreeMap::new(),
            attestations: None,
            at: Utc::now(),
        };
        let v100 = Version::parse("1.0.0").expect("v");
        store
            .record_audit("app", &audit, &[(v100, sig.clone())])
            .expect("record");
        assert_eq!(store.audit("app").expect("audit"), Some(audit));
        let rec = store.version("app", &v100).expect("get").expect("1.0.0");
        assert_eq!(rec.signature, Some(sig));
        let events = store.events("app").expect("events");
        let last = events.last().expect("an event");
        assert_eq!(last.seq, 2);
        assert_eq!(last.kind, EventKind::Drift { finding });
        // A signature for a version the ledger does not hold: nothing is written.
        let clean = AuditRecord {
            at: Utc::now(),
            versions: 1,
            findings: Vec::new(),
            errors: Vec::new(),
        };
        let missing = Version::parse("9.9.9").expect("v");
        let e = store.record_audit(
            "app",
            &clean,
            &[(missing, rec.signature.clone().expect("sig"))],
        );
        assert!(e.is_err());
        assert_eq!(store.events("app").expect("events").len(), 2);
    }

    #[test]
    fn a_locked_database_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = Store::open(dir.path()).expect("first");
        let err = Store::open(dir.path()).err().expect("second refused");
        assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "state database {} is locked by another process",
                dir.path().display()
            )
        );
    }

    #[test]
    fn schema_version_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("new db gets the schema"));
        drop(Store::open(dir.path()).expect("same schema reopens"));
        {
            let db = sled::open(dir.path()).expect("raw");
            db.open_tree("meta")
                .expect("meta")
                .insert("schema", &7u32.to_be_bytes())
                .expect("write");
            db.flush().expect("flush");
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("schema version 7"), "{err}");
    }

    /// issue 19: the read model's summaries are made again when the
    /// generation moved, so every write moves it, and a read does not; a
    /// clone shares it.
    #[test]
    fn every_write_moves_the_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let clone = store.clone();
        let last = std::cell::Cell::new(store.generation());
        let moved = |what: &str| {
            let now = clone.generation();
            assert!(now > last.get(), "{what} did not move the generation");
            last.set(now);
        };
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("publish");
        moved("publish");
        store
            .put_base(&BaseRecord::new("r/base:latest"))
            .expect("base");
        moved("put_base");
        store
            .update_image("app", |r| r.last_error = Some("x".into()))
            .expect("update");
        moved("update_image");
        store.image("app").expect("read");
        store.versions("app").expect("read");
        assert_eq!(
            store.generation(),
            last.get(),
            "a read moved the generation"
        );
        store.resume("app").expect("resume");
        moved("resume");
    }

    #[test]
    fn rollback_holds_and_supersedes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("1.0.0");
        store
            .publish("app", &version("1.0.1", 'b', '2'), None)
            .expect("1.0.1");
        let event = RollbackEvent {
            at: Utc::now(),
            from: Some(Version::parse("1.0.1").expect("v")),
            to: Version::parse("1.0.0").expect("v"),
            digest: digest('a'),
        };
        store.rollback("app", &event).expect("rollback");
        let image = store.image("app").expect("get").expect("present");
        assert_eq!(
            (image.state, image.current),
            (ImageState::Held, Some(event.to))
        );
        let v101 = store
            .version("app", &Version::parse("1.0.1").expect("v"))
            .expect("get")
            .expect("present");
        assert_eq!(v101.superseded_by, Some(event.to));
        assert_eq!(v101.reason.map(|r| r.trigger), Some(Trigger::Rollback));
        assert_eq!(store.rollbacks("app").expect("events"), vec![event.clone()]);
        let bad = RollbackEvent {
            to: Version::parse("9.9.9").expect("v"),
            ..event
        };
        assert!(
            store.rollback("app", &bad).is_err(),
            "only versions in the ledger"
        );
    }

    #[test]
    fn supersessions_are_never_rewritten_through_rollback_resume_and_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = |s: &str| Version::parse(s).expect("v");
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .publish("app", &version("1.0.0", 'a', '1'), None)
                .expect("1.0.0");
            let poll = Reason {
                trigger: Trigger::Poll,
                bases: vec![BaseChange {
                    reference: "docker.io/library/base:latest".to_owned(),
                    before: Some(digest('1')),
                    after: digest('2'),
                    moved: Vec::new(),
                }],
                source: None,
            };
            store
                .publish("app", &version("1.0.1", 'b', '2'), Some(poll))
                .expect("1.0.1");
            let back = RollbackEvent {
                at: Utc::now(),
                from: Some(v("1.0.1")),
                to: v("1.0.0"),
                digest: digest('a'),
            };
            store.rollback("app", &back).expect("rollback");
            assert!(store.resume("app").expect("resume").is_some());
            assert!(
                store.resume("app").expect("again").is_none(),
                "not held: nothing to resume, no event"
            );
            let manual = Reason {
                trigger: Trigger::Manual,
                bases: Vec::new(),
                source: None,
            };
            store
                .publish("app", &version("1.0.2", 'c', '3'), Some(manual))
                .expect("1.0.2");
        }
        let store = reopen(dir.path());
        let history = store.supersessions("app").expect("history");
        let of_100: Vec<(Version, Trigger)> = history[&v("1.0.0")]
            .iter()
            .map(|s| (s.by, s.reason.trigger))
            .collect();
        assert_eq!(
            of_100,
            [(v("1.0.1"), Trigger::Poll), (v("1.0.2"), Trigger::Manual)],
            "the first supersession of 1.0.0 stays"
        );
        assert_eq!(
            history[&v("1.0.0")][0].reason.bases[0].after,
            digest('2'),
            "with its base change"
        );
        let of_101: Vec<(Version, Trigger)> = history[&v("1.0.1")]
            .iter()
            .map(|s| (s.by, s.reason.trigger))
            .collect();
        assert_eq!(of_101, [(v("1.0.0"), Trigger::Rollback)]);
        // The record's fields are the current (latest) supersession.
        let rec = store
            .version("app", &v("1.0.0"))
            .expect("get")
            .expect("1.0.0");
        assert_eq!(rec.superseded_by, Some(v("1.0.2")));
        // Every change, numbered from 1 in order.
        let kinds: Vec<(u64, &str)> = store
            .events("app")
            .expect("events")
            .iter()
            .map(|e| {
                let k = match &e.kind {
                    EventKind::Published { .. } => "published",
                    EventKind::Superseded { .. } => "superseded",
                    EventKind::RolledBack { .. } => "rolled_back",
                    EventKind::Held { .. } => "held",
                    EventKind::Resumed => "resumed",
                    EventKind::Drift { .. } => "drift",
                };
                (e.seq, k)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (1, "published"),
                (2, "published"),
                (3, "superseded"),
                (4, "rolled_back"),
                (5, "superseded"),
                (6, "held"),
                (7, "resumed"),
                (8, "published"),
                (9, "superseded"),
            ]
        );
        let image = store.image("app").expect("get").expect("app");
        assert_eq!((image.last_event, image.state), (9, ImageState::Fresh));
        // Re-recording a known version adds nothing.
        store
            .publish("app", &version("1.0.2", 'c', '3'), None)
            .expect("again");
        assert_eq!(store.events("app").expect("events").len(), 9);
        // The JSON form: a tagged enum beside the key fields.
        let json = serde_json::to_value(&store.events("app").expect("events")[6]).expect("json");
        assert_eq!(json["kind"], "resumed");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["image"], "app");
    }

    #[test]
    fn import_replaces_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let v = [version("1.0.0", 'a', '1'), version("1.0.1", 'b', '2')];
        store.import("app", &v, Some(v[1].version)).expect("import");
        let image = store.image("app").expect("get").expect("present");
        assert!(image.ledger_synced);
        assert_eq!(image.current, Some(v[1].version));
        assert_eq!(store.versions("app").expect("versions").len(), 2);
    }

    #[test]
    fn import_many_imports_each_ledger_and_keeps_what_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        // What the ledger knows already wins over what is read back.
        store
            .publish("a", &version("1.0.0", 'a', '1'), None)
            .expect("publish");
        let read_back = version("1.0.0", 'f', '9');
        let ledgers = [
            ImportedLedger {
                name: "a".to_owned(),
                versions: vec![read_back.clone(), version("1.0.1", 'b', '2')],
                current: Some(Version::parse("1.0.1").expect("v")),
            },
            ImportedLedger {
                name: "b".to_owned(),
                versions: Vec::new(),
                current: None,
            },
        ];
        store.import_many(&ledgers).expect("import");
        let a = store.image("a").expect("get").expect("a");
        assert!(a.ledger_synced);
        assert_eq!(a.current, Some(Version::parse("1.0.0").expect("v")), "kept");
        let versions = store.versions("a").expect("versions");
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].digest, version("1.0.0", 'a', '1').digest);
        let b = store.image("b").expect("get").expect("b");
        assert!(b.ledger_synced && b.current.is_none());
        store.import_many(&[]).expect("nothing to do");
    }

    #[test]
    fn publish_supersedes_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .publish("app", &version("1.0.0", 'a', '1'), None)
                .expect("first");
            let reason = Reason {
                trigger: Trigger::Poll,
                bases: vec![BaseChange {
                    reference: "docker.io/library/base:latest".to_owned(),
                    before: Some(digest('1')),
                    after: digest('2'),
                    moved: Vec::new(),
                }],
                source: None,
            };
            store
                .publish("app", &version("1.0.1", 'b', '2'), Some(reason.clone()))
                .expect("second");
            // another image's versions do not mix in
            store
                .publish("app2", &version("9.0.0", 'c', '2'), None)
                .expect("other");
        }
        let store = reopen(dir.path());
        let versions = store.versions("app").expect("versions");
        assert_eq!(versions.len(), 2);
        assert_eq!(
            versions[0].superseded_by,
            Some(Version::parse("1.0.1").expect("v"))
        );
        assert_eq!(
            versions[0]
                .reason
                .as_ref()
                .map(|r| r.bases[0].after.clone()),
            Some(digest('2'))
        );
        assert_eq!(versions[1].superseded_by, None);
        let image = store.image("app").expect("get").expect("present");
        assert_eq!(image.current, Some(Version::parse("1.0.1").expect("v")));
        assert_eq!(image.state, ImageState::Fresh);
    }

    #[test]
    fn versions_sort_numerically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for v in ["1.0.9", "1.0.10", "1.0.10-r1", "1.0.2"] {
            store
                .publish("x", &version(v, 'a', '1'), None)
                .expect("publish");
        }
        let got: Vec<String> = store
            .versions("x")
            .expect("versions")
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        assert_eq!(got, ["1.0.2", "1.0.9", "1.0.10", "1.0.10-r1"]);
    }

    #[test]
    fn refuses_to_overwrite_a_version_with_another_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("first");
        let err = store
            .publish("app", &version("1.0.0", 'b', '1'), None)
            .expect_err("must refuse");
        assert!(err.to_string().contains("already recorded"), "{err}");
        // the same digest again is an idempotent re-record
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("same digest");
        assert_eq!(store.versions("app").expect("versions").len(), 1);
    }

    #[test]
    fn jobs_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reason = rebased_core::job::JobReason {
            trigger: Trigger::Poll,
            force: false,
            at: Utc::now(),
            detail: "base moved".to_owned(),
        };
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .put_job(&Job::new(7, "app", reason.clone()))
                .expect("put");
            store
                .put_job(&Job::new(300, "other", reason.clone()))
                .expect("put");
        }
        let store = reopen(dir.path());
        let ids: Vec<JobId> = store.jobs().expect("jobs").iter().map(|j| j.id).collect();
        assert_eq!(ids, [7, 300], "numeric order");
        store.delete_jobs(&[7]).expect("delete");
        assert_eq!(store.jobs().expect("jobs").len(), 1);
    }

    #[test]
    fn bases_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut rec = BaseRecord::new("docker.io/library/alpine:latest");
        rec.digest = Some(digest('e'));
        rec.checked_at = Some(Utc::now());
        store.put_base(&rec).expect("put");
        assert_eq!(store.base(&rec.reference).expect("get"), Some(rec.clone()));
        assert_eq!(store.bases().expect("all"), vec![rec]);
    }

    fn types(store: &Store) -> Vec<(u64, Option<String>, &'static str)> {
        store
            .log_after(0, 100)
            .expect("log")
            .into_iter()
            .map(|e| (e.seq, e.image.clone(), e.kind.name()))
            .collect()
    }

    #[test]
    fn the_global_log_numbers_every_change_in_one_order_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            assert_eq!(store.log_end().expect("end"), 0);
            store
                .publish("app", &version("1.0.0", 'a', '1'), None)
                .expect("first");
            store
                .publish("app2", &version("2.0.0", 'c', '1'), None)
                .expect("other image");
            let reason = Reason {
                trigger: Trigger::Poll,
                bases: vec![BaseChange {
                    reference: "docker.io/library/base:latest".to_owned(),
                    before: Some(digest('1')),
                    after: digest('2'),
                    moved: Vec::new(),
                }],
                source: None,
            };
            store
                .publish("app", &version("1.0.1", 'b', '2'), Some(reason.clone()))
                .expect("second");
            let at = Utc::now();
            store
                .rollback(
                    "app",
                    &RollbackEvent {
                        at,
                        from: Some(Version::parse("1.0.1").expect("v")),
                        to: Version::parse("1.0.0").expect("v"),
                        digest: digest('a'),
                    },
                )
                .expect("rollback");
            store.resume("app").expect("resume");
            let log = store.log_after(0, 100).expect("log");
            let LogKind::Published {
                version,
                previous_version,
                reason: logged,
                ..
            } = &log[2].kind
            else {
                panic!("not a publish: {:?}", log[2]);
            };
            assert_eq!(version.to_string(), "1.0.1");
            assert_eq!(
                previous_version.map(|v| v.to_string()).as_deref(),
                Some("1.0.0")
            );
            assert_eq!(logged.as_ref(), Some(&reason));
        }
        let store = reopen(dir.path());
        let app = Some("app".to_owned());
        assert_eq!(
            types(&store),
            vec![
                (1, app.clone(), "published"),
                (2, Some("app2".to_owned()), "published"),
                (3, app.clone(), "published"),
                (4, app.clone(), "rolled_back"),
                (5, app.clone(), "held"),
                (6, app.clone(), "resumed"),
            ]
        );
        assert_eq!(store.log_end().expect("end"), 6);
        assert_eq!(
            store
                .log_after(4, 1)
                .expect("after")
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![5]
        );
        // Numbers go on after a reopen.
        assert_eq!(
            store
                .log_event(None, LogKind::Test { notifier: None })
                .expect("test"),
            7
        );
        let id = store.log_id().expect("id");
        assert!(!id.is_empty());
        assert_eq!(store.log_id().expect("again"), id);
    }

    #[test]
    fn a_refused_or_repeated_publish_logs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("first");
        store
            .publish("app", &version("1.0.0", 'b', '1'), None)
            .expect_err("another digest is refused");
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("same digest");
        assert_eq!(
            types(&store),
            vec![(1, Some("app".to_owned()), "published")]
        );
        // Every version in the ledger has its published event, and back.
        let published: Vec<String> = store
            .log_after(0, 100)
            .expect("log")
            .into_iter()
            .filter_map(|e| match e.kind {
                LogKind::Published { version, .. } => Some(version.to_string()),
                _ => None,
            })
            .collect();
        let versions: Vec<String> = store
            .versions("app")
            .expect("versions")
            .into_iter()
            .map(|v| v.version.to_string())
            .collect();
        assert_eq!(published, versions);
    }

    #[test]
    fn failing_is_logged_once_per_spell_and_recovered_when_fresh_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store
            .publish("app", &version("1.0.0", 'a', '1'), None)
            .expect("first");
        let fail = |rec: &mut ImageRecord| {
            rec.state = ImageState::Failing;
            rec.last_error = Some("boom".to_owned());
        };
        store
            .job_failed("app", Some(7), "boom", fail)
            .expect("fail");
        // Retried with new inputs (queued, building), failing again: no
        // second `failing`, one more `failed`.
        store
            .update_image("app", |r| r.state = ImageState::Queued)
            .expect("queued");
        store
            .update_image("app", |r| r.state = ImageState::Building)
            .expect("building");
        store
            .job_failed("app", Some(8), "boom", fail)
            .expect("again");
        // A Dockerfile that cannot be read: failing already.
        store.update_image("app", fail).expect("same");
        store
            .publish("app", &version("1.0.1", 'b', '2'), None)
            .expect("publish");
        // Fresh again without a failing spell: nothing.
        store
            .update_image("app", |r| r.state = ImageState::Fresh)
            .expect("fresh");
        let app = Some("app".to_owned());
        assert_eq!(
            types(&store),
            vec![
                (1, app.clone(), "published"),
                (2, app.clone(), "failed"),
                (3, app.clone(), "failing"),
                (4, app.clone(), "failed"),
                (5, app.clone(), "published"),
                (6, app.clone(), "recovered"),
            ]
        );
        let log = store.log_after(0, 100).expect("log");
        assert_eq!(
            log[2].kind,
            LogKind::Failing {
                job: Some(7),
                error: Some("boom".to_owned())
            }
        );
        assert_eq!(
            log[5].kind,
            LogKind::Recovered {
                version: Some(Version::parse("1.0.1").expect("v")),
                job: None
            }
        );
        assert_eq!(
            store
                .image("app")
                .expect("get")
                .expect("some")
                .failing_since,
            None
        );
    }

    #[test]
    fn a_damaged_image_record_logs_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.damage_image_record("app").expect("damage");
        let err = store
            .job_failed("app", Some(1), "boom", |r| r.state = ImageState::Failing)
            .expect_err("does not decode");
        assert!(matches!(err, StateError::Decode { .. }), "{err:?}");
        assert_eq!(store.log_end().expect("end"), 0);
    }

    #[test]
    fn a_base_error_is_stored_with_its_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut rec = BaseRecord::new("docker.io/library/base:latest");
        rec.error = Some("connection refused".to_owned());
        store.base_failed(&rec).expect("record");
        assert_eq!(store.base(&rec.reference).expect("get"), Some(rec.clone()));
        let log = store.log_after(0, 10).expect("log");
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].image, None);
        assert_eq!(
            log[0].kind,
            LogKind::BaseError {
                base: rec.reference.clone(),
                error: "connection refused".to_owned()
            }
        );
    }

    #[test]
    fn the_log_keeps_the_newest_entries_and_never_reuses_a_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let extra = 25;
        (&store.log, &store.meta)
            .transaction(|(log, meta)| {
                for _ in 0..KEEP_LOG + extra {
                    log_append(log, meta, None, Utc::now(), LogKind::Resumed)?;
                }
                Ok(())
            })
            .map_err(|e: TransactionError<String>| e.to_string())
            .expect("fill");
        store.trim_log().expect("trim");
        assert_eq!(store.log_start().expect("start"), Some(extra + 1));
        assert_eq!(store.log.len() as u64, KEEP_LOG);
        // A reader behind the start gets what is left, from the start.
        let first = store.log_after(3, 2).expect("after");
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![extra + 1, extra + 2]
        );
        let next = store
            .log_event(None, LogKind::Test { notifier: None })
            .expect("one more");
        assert_eq!(next, KEEP_LOG + extra + 1);
        assert_eq!(store.log_start().expect("start"), Some(extra + 2));
        assert_eq!(store.log.len() as u64, KEEP_LOG);
    }

    #[test]
    fn outboxes_round_trip_and_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let rec = OutboxRecord {
            name: "ops".to_owned(),
            cursor: 4,
            attempts: 2,
            ..OutboxRecord::default()
        };
        store.put_outbox(&rec).expect("put");
        assert_eq!(store.outbox("ops").expect("get"), Some(rec.clone()));
        assert_eq!(store.outboxes().expect("all"), vec![rec.clone()]);
        assert_eq!(store.drop_outbox("ops").expect("drop"), Some(rec));
        assert_eq!(store.outbox("ops").expect("get"), None);
    }
}
