//! Build jobs: what the queue holds and the ledger keeps.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Trigger, Version};

/// A job's id: unique, increasing.
pub type JobId = u64;

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to run (possibly until `not_before`, after a failure).
    Queued,
    /// Running now.
    Running,
    /// Finished: published a version, or found the image already fresh.
    Succeeded,
    /// Gave up after `max_attempts`.
    Failed,
    /// Dropped without running (e.g. the image left the config).
    Cancelled,
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

/// One reason a job exists; merged jobs keep all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReason {
    /// What asked for it.
    pub trigger: Trigger,
    /// When.
    pub at: DateTime<Utc>,
    /// Human detail: the base and digests, the parent image, who asked.
    pub detail: String,
    /// An operator's rebuild through a hold (`rebuild --force`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A build job for one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The image it builds.
    pub image: String,
    /// Where it stands.
    pub state: JobState,
    /// Every reason merged into it, oldest first.
    pub reasons: Vec<JobReason>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to start before this time (backoff).
    pub not_before: DateTime<Utc>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The error of the latest failed attempt.
    pub error: Option<String>,
    /// The version it published, if it published one.
    pub published: Option<Version>,
    /// Why a finished job published nothing (the image was already fresh,
    /// or held).
    #[serde(default)]
    pub note: Option<String>,
}

impl Job {
    /// A new queued job.
    pub fn new(id: JobId, image: &str, reason: JobReason) -> Self {
        Self {
            id,
            image: image.to_owned(),
            state: JobState::Queued,
            not_before: reason.at,
            created_at: reason.at,
            reasons: vec![reason],
            attempts: 0,
            started_at: None,
            finished_at: None,
            error: None,
            published: None,
            note: None,
        }
    }

    /// The trigger that names the job: the first reason's.
    pub fn trigger(&self) -> Trigger {
        self.reasons.first().map_or(Trigger::Poll, |r| r.trigger)
    }

    /// True when an operator asked for it (builds even a fresh image).
    pub fn is_manual(&self) -> bool {
        self.reasons.iter().any(|r| r.trigger == Trigger::Manual)
    }

    /// True when an operator forced it through a hold.
    pub fn is_forced(&self) -> bool {
        self.reasons.iter().any(|r| r.force)
    }

    /// Attempts made, counted from 1: the failed ones and the one running
    /// or that succeeded (what the log calls `attempt=N`).
    pub fn attempts_made(&self) -> u32 {
        match self.state {
            JobState::Running | JobState::Succeeded => self.attempts + 1,
            _ => self.attempts,
        }
    }

    /// True once it will not run again.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}
