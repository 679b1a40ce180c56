//! Why a build happened.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What caused a build: recorded with every version and supersession.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The image had no published version.
    Initial,
    /// A scheduled poll saw a base digest change.
    Poll,
    /// A registry webhook led to a check that saw a change.
    Webhook,
    /// A managed image this one is built from published a new version.
    Cascade,
    /// An operator asked for a rebuild.
    Manual,
    /// The build context changed.
    Context,
    /// An operator rolled the image back to an earlier version.
    Rollback,
    /// Recorded from the registry (state rebuilt); the original trigger was not annotated.
    Recovered,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initial => "initial",
            Self::Poll => "poll",
            Self::Webhook => "webhook",
            Self::Cascade => "cascade",
            Self::Manual => "manual",
            Self::Context => "context",
            Self::Rollback => "rollback",
            Self::Recovered => "recovered",
        })
    }
}
