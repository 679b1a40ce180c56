//! The global event log as the API and the notifiers show it: the one
//! conversion of a stored [`LogEvent`] into the event document
//! ([`EventView`]), and the live feed of the event stream (new log
//! entries and job changes, from the store's own subscriptions, so every
//! writer is seen whoever it is).

use std::sync::Arc;

use chrono::Utc;
use rebased_api::{
    BaseChangeView, EventView, JobMessage, Live as Feed, ReasonView, SourceChangeView,
};
use rebased_state::{LogEvent, LogKind, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::live::Live;

/// The event document of `e`; `repository` is the image's repository in
/// the config in force (none for an image no longer configured).
pub fn view(e: &LogEvent, live: &Live) -> EventView {
    let repository = e
        .image
        .as_deref()
        .and_then(|name| live.image(name))
        .map(|i| i.repository.to_string());
    let mut v = EventView {
        seq: e.seq,
        kind: e.kind.name().to_owned(),
        time: e.at,
        image: e.image.clone(),
        version: None,
        digest: None,
        repository,
        previous_version: None,
        reason: None,
        job: None,
        log_url: None,
        detail: None,
    };
    match &e.kind {
        LogKind::Published {
            version,
            digest,
            previous_version,
            reason,
            job,
            ..
        } => {
            v.version = Some(*version);
            v.digest = Some(digest.clone());
            v.previous_version = *previous_version;
            v.reason = reason.clone().map(reason_view);
            v.job = *job;
        }
        LogKind::RolledBack { from, to, digest } => {
            v.version = Some(*to);
            v.digest = Some(digest.clone());
            v.previous_version = *from;
        }
        LogKind::Held { reason } => v.detail = Some(reason.clone()),
        LogKind::Resumed => {}
        LogKind::Failed { job, error } => {
            v.job = *job;
            v.detail = Some(error.clone());
        }
        LogKind::Failing { job, error } => {
            v.job = *job;
            v.detail = error.clone();
        }
        LogKind::Recovered { version, job } => {
            v.version = *version;
            v.job = *job;
        }
        LogKind::BaseError { base, error } => v.detail = Some(format!("{base}: {error}")),
        LogKind::Drift { finding } => {
            v.version = Some(finding.version);
            let found = finding.found.as_deref().unwrap_or("nothing");
            let mut d = format!(
                "{}: {} expected {}, found {found}",
                finding.kind.as_str(),
                finding.tag,
                finding.expected
            );
            if let Some(r) = &finding.repaired {
                d += &format!("; repaired: {r}");
            }
            v.detail = Some(d);
        }
        LogKind::Test { notifier } => {
            v.detail = Some(match notifier {
                Some(n) => format!("a test event for notifier {n}"),
                None => "a test event".to_owned(),
            })
        }
    }
    v.log_url = v.job.map(|j| format!("/v1/jobs/{j}/log"));
    v
}

/// The API's view of a supersession's reason.
pub fn reason_view(r: rebased_state::Reason) -> ReasonView {
    ReasonView {
        source: r.source.map(|c| SourceChangeView {
            before: c.before,
            after: c.after,
        }),
        trigger: r.trigger,
        bases: r
            .bases
            .into_iter()
            .map(|b| BaseChangeView {
                reference: b.reference,
                before: b.before,
                after: b.after,
                moved: b.moved,
            })
            .collect(),
    }
}

/// The feed's sender; the API subscribes to it.
pub fn channel() -> Arc<broadcast::Sender<Feed>> {
    Arc::new(broadcast::channel(256).0)
}

/// Tells `feed` of every write to the event log and every job record
/// written, until `shutdown`.
pub async fn pump(store: Store, feed: Arc<broadcast::Sender<Feed>>, shutdown: CancellationToken) {
    let mut log = store.watch_log();
    let mut jobs = store.watch_jobs();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = log.changed() => {
                if !changed {
                    return;
                }
                // No subscriber is not an error.
                let _ = feed.send(Feed::Logged);
            }
            job = jobs.next() => {
                let Some(job) = job else { return };
                let _ = feed.send(Feed::Job(JobMessage {
                    job: job.id,
                    image: job.image,
                    state: job.state.to_string(),
                    time: Utc::now(),
                }));
            }
        }
    }
}
