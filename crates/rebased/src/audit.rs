//! The immutability audit: for every version in the ledger, the version
//! tag's digest in the registry, the floating tags of the current version,
//! and each recorded signature (present, and verifying with the key that
//! made it). Findings say what was expected and what was found; with
//! `daemon.audit_repair` it repairs what it can (floating tags moved back,
//! signatures pushed again, a moved or lost version tag re-pointed at the
//! recorded manifest while the registry still holds it) and never deletes
//! anything. One request per tag (a signature's payload is one blob read
//! more), within each registry's concurrency (the registry client's
//! permits), with up to [`AUDIT_CONCURRENCY`] images in flight; one
//! audit runs at a time. A stop ends an audit between requests: what was
//! recorded stays, the images left are audited the next time.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use futures_util::StreamExt;
use rebased_api::metrics::Metrics;
use rebased_core::config::ImageConfig;
use rebased_core::{Digest, ImageRef, Version};
use rebased_registry::Registry;
use rebased_sign::{PublicKey, SigningKey};
use rebased_state::{AuditRecord, DriftKind, Finding, SignatureRecord, Store, VersionRecord};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::destination::Destination;
use crate::live::Live;
use crate::publish::{move_tags, Move};
use crate::{records, signing};

/// One audit at a time (the schedule and `POST /v1/audit` may meet).
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Images audited at once (each one's requests in turn; the registry
/// client's permits bound each registry).
pub const AUDIT_CONCURRENCY: usize = 8;

/// Why an audit did not run, or did not run to its end.
#[derive(Debug)]
pub enum AuditError {
    /// No such image.
    NotFound(String),
    /// The store failed.
    Store(String),
    /// The daemon is stopping: the audit ended after this many images
    /// (each of them recorded).
    Stopped(usize),
}

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(name) => write!(f, "no image {name:?} is managed"),
            Self::Store(e) => f.write_str(e),
            Self::Stopped(n) => write!(
                f,
                "the daemon is stopping: the audit ended after {n} images (each recorded); the others are audited next time"
            ),
        }
    }
}

/// What an audit needs.
pub struct Auditor {
    /// The config in force (images, registries, key, `audit_repair`).
    pub live: Arc<Live>,
    /// The ledger.
    pub store: Store,
    /// Where findings are counted.
    pub metrics: Arc<Metrics>,
    /// The daemon's stop: an audit ends at it.
    pub stop: CancellationToken,
}

/// The audit of one image, before it is recorded.
struct Outcome {
    record: AuditRecord,
    signatures: Vec<(Version, SignatureRecord)>,
}

impl Auditor {
    /// Audits every image (or only `only`), records each audit (findings
    /// and their `drift` events in one transaction) and returns them.
    pub async fn run(&self, only: Option<&str>) -> Result<Vec<(String, AuditRecord)>, AuditError> {
        let _one = tokio::select! {
            one = RUNNING.lock() => one,
            () = self.stop.cancelled() => return Err(AuditError::Stopped(0)),
        };
        let (cfg, registry) = self.live.in_force();
        let images: Vec<&ImageConfig> = cfg
            .image
            .iter()
            .filter(|i| only.is_none_or(|n| i.name.as_str() == n))
            .collect();
        if let (Some(name), true) = (only, images.is_empty()) {
            return Err(AuditError::NotFound(name.to_owned()));
        }
        let repair = cfg.daemon.audit_repair;
        let key = self.live.signer().ok().flatten();
        let (registry, key) = (&*registry, key.as_deref());
        let each: Vec<(&ImageConfig, ImageRef)> = images
            .into_iter()
            .filter_map(|i| Some((i, Destination::from(&i.repository).registry().cloned()?)))
            .collect();
        // By index: a stream of borrowed items trips the compiler's
        // higher-ranked lifetime check when the future is spawned.
        let each = &each;
        let mut audits = futures_util::stream::iter(0..each.len())
            .map(|i| self.named(each[i].0, &each[i].1, registry, repair, key))
            .buffered(AUDIT_CONCURRENCY);
        let mut out = Vec::new();
        loop {
            let next = tokio::select! {
                next = audits.next() => next,
                () = self.stop.cancelled() => {
                    info!(audited = out.len(), "stopping: the audit ends here; the images left are audited next time");
                    return Err(AuditError::Stopped(out.len()));
                }
            };
            let Some((name, outcome)) = next else { break };
            let outcome = outcome?;
            self.count(&name, &outcome.record);
            let (n, rec, sigs) = (name.clone(), outcome.record.clone(), outcome.signatures);
            records::write(&self.store, move |s| s.record_audit(&n, &rec, &sigs))
                .await
                .map_err(|e| AuditError::Store(format!("recording the audit of {name}: {e:#}")))?;
            info!(image = %name, versions = outcome.record.versions, findings = outcome.record.findings.len(), "audited");
            out.push((name, outcome.record));
        }
        Ok(out)
    }

    /// [`Auditor::image`] with the image's name.
    async fn named(
        &self,
        image: &ImageConfig,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: Option<&SigningKey>,
    ) -> (String, Result<Outcome, AuditError>) {
        let outcome = self.image(image, repo, registry, repair, key).await;
        (image.name.as_str().to_owned(), outcome)
    }

    /// Counts and logs one image's findings.
    fn count(&self, name: &str, record: &AuditRecord) {
        let unrepaired = record
            .findings
            .iter()
            .filter(|f| f.repaired.is_none())
            .count();
        for f in &record.findings {
            let repaired = if f.repaired.is_some() {
                "true"
            } else {
                "false"
            };
            self.metrics.inc(
                "rebased_audit_findings_total",
                &[("kind", f.kind.as_str()), ("repaired", repaired)],
            );
            warn!(image = %name, kind = f.kind.as_str(), tag = %f.tag, expected = %f.expected, found = f.found.as_deref().unwrap_or("nothing"), repaired = f.repaired.as_deref().unwrap_or("no"), "audit: drift");
        }
        self.metrics.set_gauge(
            "rebased_audit_drift",
            &[("image", name)],
            u64::try_from(unrepaired).unwrap_or(u64::MAX),
        );
    }

    async fn image(
        &self,
        image: &ImageConfig,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: Option<&SigningKey>,
    ) -> Result<Outcome, AuditError> {
        let name = image.name.as_str();
        let store_err = |e: rebased_state::StateError| AuditError::Store(e.to_string());
        let versions = self.store.versions(name).map_err(store_err)?;
        let current = self
            .store
            .image(name)
            .map_err(store_err)?
            .and_then(|r| r.current);
        let mut record = AuditRecord {
            at: Utc::now(),
            versions: versions.len(),
            findings: Vec::new(),
            errors: Vec::new(),
        };
        let mut signatures = Vec::new();
        for v in &versions {
            self.version(v, repo, registry, repair, key, &mut record, &mut signatures)
                .await;
        }
        if let Some(cur) = current.and_then(|c| versions.iter().find(|v| v.version == c)) {
            self.floating(image, cur, repo, registry, repair, &mut record)
                .await;
        }
        Ok(Outcome { record, signatures })
    }

    /// Whether the registry still holds the manifest `digest`.
    async fn holds(registry: &Registry, repo: &ImageRef, digest: &Digest) -> bool {
        registry.manifest(&repo.pinned(digest)).await.is_ok()
    }

    #[allow(clippy::too_many_arguments)]
    async fn version(
        &self,
        v: &VersionRecord,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: Option<&SigningKey>,
        record: &mut AuditRecord,
        signatures: &mut Vec<(Version, SignatureRecord)>,
    ) {
        let tag = v.version.to_string();
        match registry.lookup(&repo.with_tag(&tag)).await {
            Ok(Some(d)) if d == v.digest => {}
            Ok(found) => {
                let kind = if found.is_some() {
                    DriftKind::VersionTagMoved
                } else {
                    DriftKind::VersionTagMissing
                };
                let repaired = if repair && Self::holds(registry, repo, &v.digest).await {
                    match registry.tag(repo, &v.digest, &tag).await {
                        Ok(()) => Some(format!(
                            "{tag} re-pointed at the recorded manifest {}",
                            v.digest
                        )),
                        Err(e) => {
                            record.errors.push(format!("re-pointing {tag}: {e}"));
                            None
                        }
                    }
                } else {
                    None
                };
                record.findings.push(Finding {
                    kind,
                    version: v.version,
                    tag: tag.clone(),
                    expected: v.digest.to_string(),
                    found: found.map(|d| d.to_string()),
                    repaired,
                });
            }
            Err(e) => record.errors.push(format!("{tag}: {e}")),
        }
        match &v.signature {
            Some(sig) => {
                self.recorded(v, sig, repo, registry, repair, key, record, signatures)
                    .await
            }
            None => {
                if let Some(key) = key {
                    self.unrecorded(v, repo, registry, repair, key, record, signatures)
                        .await;
                }
            }
        }
    }

    /// A recorded signature: checked with the key that made it (a new key
    /// in force does not make older signatures findings); one that is lost
    /// or does not verify is, and a repair signs again with the key in force.
    #[allow(clippy::too_many_arguments)]
    async fn recorded(
        &self,
        v: &VersionRecord,
        sig: &SignatureRecord,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: Option<&SigningKey>,
        record: &mut AuditRecord,
        signatures: &mut Vec<(Version, SignatureRecord)>,
    ) {
        let tag = v.version.to_string();
        let public = match PublicKey::from_pem(&sig.public_key) {
            Ok(p) => p,
            Err(e) => {
                record
                    .errors
                    .push(format!("{tag}: the recorded public key: {e}"));
                return;
            }
        };
        let mut lost = Vec::new();
        for digest in std::iter::once(&v.digest).chain(sig.children.keys()) {
            let sig_tag = rebased_sign::cosign::signature_tag(digest);
            match signing::check(registry, repo, digest, &public).await {
                Ok(signing::Check::Verified(_)) => {}
                Ok(signing::Check::Missing) => {
                    lost.push((DriftKind::SignatureMissing, sig_tag, None))
                }
                Ok(signing::Check::Invalid(why)) => {
                    lost.push((DriftKind::SignatureInvalid, sig_tag, Some(why)))
                }
                Err(e) => record.errors.push(format!("{sig_tag}: {e:#}")),
            }
        }
        if lost.is_empty() {
            return;
        }
        let repaired = self
            .sign_again(
                v,
                repo,
                registry,
                repair,
                key,
                sig.attestations.clone(),
                record,
                signatures,
            )
            .await;
        for (kind, sig_tag, found) in lost {
            record.findings.push(Finding {
                kind,
                version: v.version,
                tag: sig_tag,
                expected: format!("a signature of {} by key {}", v.digest, sig.key),
                found,
                repaired: repaired.clone(),
            });
        }
    }

    /// A version without a recorded signature (read back from the
    /// registry: first sight, a lost state directory) while a key is in
    /// force: its `.sig` (and each child's) is checked with that key. Found
    /// and verifying, it is recorded, and later audits check it like any
    /// other; missing, it is a `signature_missing` finding that a repair
    /// signs. A `.sig` that holds only other keys' signatures (an older
    /// key, another signer) is left alone and is no finding: the audit
    /// cannot tell a rotated key from a stranger's, and never replaces a
    /// signature it did not record.
    #[allow(clippy::too_many_arguments)]
    async fn unrecorded(
        &self,
        v: &VersionRecord,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: &SigningKey,
        record: &mut AuditRecord,
        signatures: &mut Vec<(Version, SignatureRecord)>,
    ) {
        let public = key.public();
        let mut verified = BTreeMap::new();
        let mut missing = Vec::new();
        let mut foreign = false;
        for digest in std::iter::once(&v.digest).chain(v.children.values()) {
            let sig_tag = rebased_sign::cosign::signature_tag(digest);
            match signing::check(registry, repo, digest, &public).await {
                Ok(signing::Check::Verified(m)) => {
                    verified.insert(digest.clone(), m);
                }
                Ok(signing::Check::Missing) => missing.push(sig_tag),
                Ok(signing::Check::Invalid(why)) => {
                    info!(version = %v.version, tag = %sig_tag, "audit: signed, not by the key in force ({why}); left alone");
                    foreign = true;
                }
                Err(e) => {
                    record.errors.push(format!("{sig_tag}: {e:#}"));
                    return;
                }
            }
        }
        if missing.is_empty() {
            if let (false, Some(manifest)) = (foreign, verified.remove(&v.digest)) {
                signatures.push((
                    v.version,
                    SignatureRecord {
                        public_key: public.to_pem(),
                        key: public.fingerprint(),
                        manifest,
                        children: verified,
                        attestations: None,
                        at: Utc::now(),
                    },
                ));
            }
            return;
        }
        let repaired = self
            .sign_again(
                v,
                repo,
                registry,
                repair && !foreign,
                Some(key),
                None,
                record,
                signatures,
            )
            .await;
        for sig_tag in missing {
            record.findings.push(Finding {
                kind: DriftKind::SignatureMissing,
                version: v.version,
                tag: sig_tag,
                expected: format!(
                    "a signature of {} by key {} (the key in force; none recorded: the version was read back from the registry)",
                    v.digest,
                    public.fingerprint()
                ),
                found: None,
                repaired: repaired.clone(),
            });
        }
    }

    /// With `repair` and a key, signs `v` again (and its children) while
    /// the registry still holds its manifest; what the repair did.
    #[allow(clippy::too_many_arguments)]
    async fn sign_again(
        &self,
        v: &VersionRecord,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        key: Option<&SigningKey>,
        attestations: Option<Digest>,
        record: &mut AuditRecord,
        signatures: &mut Vec<(Version, SignatureRecord)>,
    ) -> Option<String> {
        let (true, Some(key)) = (repair, key) else {
            return None;
        };
        if !Self::holds(registry, repo, &v.digest).await {
            return None;
        }
        match signing::sign(
            registry,
            repo,
            key,
            &v.digest,
            &v.children,
            &[],
            signing::Keep::Existing,
        )
        .await
        {
            Ok(mut new) => {
                new.attestations = new.attestations.or(attestations);
                let done = format!("signed again with key {}", new.key);
                signatures.push((v.version, new));
                Some(done)
            }
            Err(e) => {
                record
                    .errors
                    .push(format!("signing {} again: {e:#}", v.version));
                None
            }
        }
    }

    async fn floating(
        &self,
        image: &ImageConfig,
        cur: &VersionRecord,
        repo: &ImageRef,
        registry: &Registry,
        repair: bool,
        record: &mut AuditRecord,
    ) {
        let name = image.name.as_str();
        for tag in image.tags.iter().map(|t| t.render(&cur.version)) {
            let found = match registry.lookup(&repo.with_tag(&tag)).await {
                Ok(Some(d)) if d == cur.digest => continue,
                Ok(found) => found,
                Err(e) => {
                    record.errors.push(format!("{tag}: {e}"));
                    continue;
                }
            };
            // A publish (or rollback) may have moved the current version
            // since the ledger was read: then this is no drift.
            let now = self
                .store
                .image(name)
                .ok()
                .flatten()
                .and_then(|r| r.current);
            if now != Some(cur.version) {
                continue;
            }
            let repaired = if repair {
                let dest = Destination::Registry(repo.clone());
                let tags = [tag.clone()];
                match move_tags(&dest, registry, &cur.digest, &tags, Move::New).await {
                    Ok(()) => Some(format!(
                        "{tag} moved back to {} ({})",
                        cur.version, cur.digest
                    )),
                    Err(e) => {
                        record.errors.push(format!("{e:#}"));
                        None
                    }
                }
            } else {
                None
            };
            record.findings.push(Finding {
                kind: DriftKind::FloatingTagMoved,
                version: cur.version,
                tag,
                expected: cur.digest.to_string(),
                found: found.map(|d| d.to_string()),
                repaired,
            });
        }
    }
}

/// Runs the audit on `daemon.audit` (the schedule of the config in force,
/// in `daemon.timezone`) until `shutdown`; a reload that changes the
/// schedule plans the next run anew.
pub async fn scheduled(auditor: Auditor, shutdown: CancellationToken) {
    // The schedule's text and the next run it gives.
    let mut planned: Option<(String, chrono::DateTime<Utc>)> = None;
    loop {
        let cfg = auditor.live.cfg();
        let now = Utc::now();
        planned = cfg
            .daemon
            .audit
            .as_ref()
            .and_then(|spec| match planned.take() {
                Some((text, at)) if text == spec.as_str() => Some((text, at)),
                _ => {
                    let tz = cfg
                        .daemon
                        .timezone
                        .parse::<chrono_tz::Tz>()
                        .unwrap_or(chrono_tz::UTC);
                    rebased_scheduler::schedule::next_after_in(spec, tz, now)
                        .map(|at| (spec.as_str().to_owned(), at))
                }
            });
        drop(cfg);
        if let Some((_, at)) = &planned {
            if *at <= now {
                planned = None;
                match auditor.run(None).await {
                    Ok(_) => {}
                    Err(e @ AuditError::Stopped(_)) => info!("{e}"),
                    Err(e) => error!("the scheduled audit failed: {e}"),
                }
                continue;
            }
        }
        // Looks at the config again at least every minute (a reload).
        let wait = planned
            .as_ref()
            .and_then(|(_, at)| (*at - now).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(60))
            .min(std::time::Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebased_core::config::Config;
    use rebased_core::Trigger;
    use std::time::{Duration, Instant};

    /// A stop ends an audit waiting on a registry that never answers,
    /// at once and said so; nothing is recorded for the image cut short.
    #[tokio::test]
    async fn a_stop_ends_an_audit_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Accepts connections (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = silent.local_addr().expect("addr");
        let cfg = Config::parse(&format!(
            "[registries.\"{host}\"]\ninsecure = true\n[[image]]\nname = \"web\"\ncontext = \"/srv/web\"\nrepository = \"{host}/web\"\nversion = \"1.0.0\"\n"
        ))
        .expect("config");
        let store = Store::open(&dir.path().join("db")).expect("store");
        let digest: rebased_core::Digest = format!("sha256:{}", "a".repeat(64))
            .parse()
            .expect("digest");
        let version = VersionRecord::new(
            Version::parse("1.0.0").expect("version"),
            digest,
            BTreeMap::new(),
            Trigger::Initial,
        );
        store.publish("web", &version, None).expect("publish");
        let stop = CancellationToken::new();
        let auditor = Auditor {
            live: Arc::new(Live::new(
                dir.path().join("rebased.toml"),
                cfg,
                false,
                Arc::new(Metrics::default()),
            )),
            store: store.clone(),
            metrics: Arc::new(Metrics::default()),
            stop: stop.clone(),
        };
        let run = tokio::spawn(async move { auditor.run(None).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished(), "the silent registry holds the audit");
        let asked = Instant::now();
        stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("ended within 5 s of the stop")
            .expect("no panic");
        assert!(matches!(ended, Err(AuditError::Stopped(0))), "{ended:?}");
        assert!(asked.elapsed() < Duration::from_secs(2));
        assert!(
            store.audits().expect("audits").is_empty(),
            "nothing recorded"
        );
    }
}
