//! The ledger stays bounded: per-image history is trimmed to
//! `KEEP_VERSIONS` (the current and highest versions always kept), and the
//! database does not grow with the number of jobs that came and went.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use rebased_core::job::{Job, JobReason};
use rebased_core::{Digest, Trigger, Version};
use rebased_state::{Store, VersionRecord, KEEP_VERSIONS};

fn digest(n: u64) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

fn record(patch: u64) -> VersionRecord {
    VersionRecord {
        children: Default::default(),
        version: Version::parse(&format!("1.0.{patch}")).unwrap(),
        digest: digest(patch),
        built_at: Utc::now(),
        bases: BTreeMap::from([(
            "docker.io/library/base:latest".to_owned(),
            digest(patch + 1),
        )]),
        platforms: BTreeMap::new(),
        trigger: Trigger::Poll,
        superseded_by: None,
        superseded_at: None,
        reason: None,
        supersedes: patch
            .checked_sub(1)
            .map(|p| Version::parse(&format!("1.0.{p}")).unwrap()),
        job: Some(patch),
        source: None,
        signature: None,
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn history_per_image_is_trimmed_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let total = KEEP_VERSIONS as u64 + 50;
    for p in 0..total {
        store.publish("app", &record(p), None).unwrap();
    }
    let versions = store.versions("app").unwrap();
    assert_eq!(versions.len(), KEEP_VERSIONS);
    assert_eq!(
        versions[0].version.to_string(),
        "1.0.50",
        "the oldest went first"
    );
    let newest = versions.last().unwrap();
    assert_eq!(newest.version.to_string(), format!("1.0.{}", total - 1));
    let image = store.image("app").unwrap().unwrap();
    assert_eq!(image.current, Some(newest.version));
    // Other images keep theirs.
    store.publish("other", &record(0), None).unwrap();
    assert_eq!(store.versions("other").unwrap().len(), 1);
}

#[test]
fn jobs_that_come_and_go_do_not_grow_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reason = JobReason {
        trigger: Trigger::Poll,
        force: false,
        at: Utc::now(),
        detail: "base changed".to_owned(),
    };
    let mut sizes = Vec::new();
    for round in 0..4u64 {
        // 500 jobs queued, run and finished; the queue forgets all but the
        // newest 200, as the dispatcher does.
        for i in 0..500 {
            let id = round * 500 + i;
            let mut job = Job::new(id, "app", reason.clone());
            store.put_job(&job).unwrap();
            job.state = rebased_core::job::JobState::Succeeded;
            store.put_job(&job).unwrap();
        }
        let ids: Vec<u64> = store
            .jobs()
            .unwrap()
            .iter()
            .map(|j| j.id)
            .rev()
            .skip(200)
            .collect();
        store.delete_jobs(&ids).unwrap();
        store.flush("round").unwrap();
        sizes.push(dir_size(dir.path()));
    }
    assert_eq!(store.jobs().unwrap().len(), 200);
    println!("database size after each round of 500 jobs: {sizes:?}");
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    assert!(
        last <= first.max(1) * 3,
        "the database keeps growing with finished jobs: {sizes:?}"
    );
}

#[test]
fn ledger_events_are_trimmed_to_the_newest() {
    use rebased_state::{EventKind, RollbackEvent, KEEP_EVENTS, KEEP_ROLLBACKS};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Each publish after the first is two events (published, superseded).
    let total = (KEEP_EVENTS / 2) as u64 + 20;
    for p in 0..total {
        store.publish("app", &record(p), None).unwrap();
    }
    let events = store.events("app").unwrap();
    assert_eq!(events.len(), KEEP_EVENTS);
    let last = events.last().unwrap();
    assert_eq!(last.seq, 2 * total - 1, "numbering goes on past the trim");
    assert!(matches!(last.kind, EventKind::Superseded { .. }));
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "the newest kept, in order"
    );
    // Rollbacks: their own bound, and their events are trimmed likewise.
    let to = Version::parse(&format!("1.0.{}", total - 2)).unwrap();
    for i in 0..KEEP_ROLLBACKS + 5 {
        let event = RollbackEvent {
            at: Utc::now() + chrono::Duration::microseconds(i as i64),
            from: store.image("app").unwrap().unwrap().current,
            to,
            digest: digest(total - 2),
        };
        store.rollback("app", &event).unwrap();
        store.resume("app").unwrap();
    }
    assert_eq!(store.rollbacks("app").unwrap().len(), KEEP_ROLLBACKS);
    assert_eq!(store.events("app").unwrap().len(), KEEP_EVENTS);
}
