//! The states an image can be in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an image stands, as the API and CLI show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Built from the current base digests.
    #[default]
    Fresh,
    /// Inputs changed, not yet queued.
    Stale,
    /// A build is queued.
    Queued,
    /// A build is running.
    Building,
    /// Builds failed; waiting for new inputs or a manual rebuild.
    Failing,
    /// Rolled back; no automatic builds until resumed.
    Held,
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Failing => "failing",
            Self::Held => "held",
        })
    }
}
