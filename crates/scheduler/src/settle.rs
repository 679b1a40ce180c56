//! Settling: a changed digest counts only once it has held for `settle`
//! (multi-arch uploads land one platform at a time).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rebased_core::Digest;
use serde::{Deserialize, Serialize};

/// What is known of one base's digest (or, `T = String`, of a source's
/// commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch<T = Digest> {
    /// The digest that held: what builds use.
    pub settled: Option<T>,
    /// A different digest seen, and since when.
    pub pending: Option<(T, DateTime<Utc>)>,
}

impl<T> Default for Watch<T> {
    fn default() -> Self {
        Self {
            settled: None,
            pending: None,
        }
    }
}

/// What one observation means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation<T = Digest> {
    /// Nothing new.
    Unchanged,
    /// First sight of this base: taken as settled at once.
    First(T),
    /// A new digest is waiting to settle; check again at this time.
    Waiting(DateTime<Utc>),
    /// A new digest held for the settle time.
    Settled {
        /// The digest before.
        before: Option<T>,
        /// The digest now.
        after: T,
    },
    /// A pending digest flipped back to the settled one: nothing happens.
    Reverted,
}

impl<T: Clone + PartialEq> Watch<T> {
    /// Folds in a digest seen at `now`.
    pub fn observe(&mut self, seen: &T, now: DateTime<Utc>, settle: Duration) -> Observation<T> {
        let settle = chrono::Duration::from_std(settle).unwrap_or(chrono::Duration::MAX);
        match &self.settled {
            None => {
                self.settled = Some(seen.clone());
                self.pending = None;
                return Observation::First(seen.clone());
            }
            Some(s) if s == seen => {
                return if self.pending.take().is_some() {
                    Observation::Reverted
                } else {
                    Observation::Unchanged
                };
            }
            Some(_) => {}
        }
        let since = match &self.pending {
            Some((d, since)) if d == seen => *since,
            _ => now,
        };
        let due = since
            .checked_add_signed(settle)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now >= due {
            let before = self.settled.replace(seen.clone());
            self.pending = None;
            Observation::Settled {
                before,
                after: seen.clone(),
            }
        } else {
            self.pending = Some((seen.clone(), since));
            Observation::Waiting(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).expect("valid")
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("valid")
    }

    const SETTLE: Duration = Duration::from_secs(30);

    #[test]
    fn first_sight_settles_at_once() {
        let mut w = Watch::default();
        assert_eq!(
            w.observe(&d('1'), at(0), SETTLE),
            Observation::First(d('1'))
        );
        assert_eq!(w.observe(&d('1'), at(5), SETTLE), Observation::Unchanged);
    }

    #[test]
    fn a_change_that_holds_settles_after_the_window() {
        let mut w = Watch::default();
        w.observe(&d('1'), at(0), SETTLE);
        assert_eq!(
            w.observe(&d('2'), at(10), SETTLE),
            Observation::Waiting(at(40))
        );
        assert_eq!(
            w.observe(&d('2'), at(20), SETTLE),
            Observation::Waiting(at(40))
        );
        assert_eq!(
            w.observe(&d('2'), at(40), SETTLE),
            Observation::Settled {
                before: Some(d('1')),
                after: d('2')
            }
        );
        assert_eq!(w.settled, Some(d('2')));
    }

    #[test]
    fn a_flip_back_starts_nothing() {
        let mut w = Watch::default();
        w.observe(&d('1'), at(0), SETTLE);
        assert!(matches!(
            w.observe(&d('2'), at(10), SETTLE),
            Observation::Waiting(_)
        ));
        assert_eq!(w.observe(&d('1'), at(20), SETTLE), Observation::Reverted);
        assert_eq!(w.settled, Some(d('1')));
        assert_eq!(w.pending, None);
    }

    #[test]
    fn another_change_restarts_the_window() {
        let mut w = Watch::default();
        w.observe(&d('1'), at(0), SETTLE);
        w.observe(&d('2'), at(10), SETTLE);
        assert_eq!(
            w.observe(&d('3'), at(35), SETTLE),
            Observation::Waiting(at(65))
        );
        assert!(matches!(
            w.observe(&d('3'), at(65), SETTLE),
            Observation::Settled { .. }
        ));
    }

    #[test]
    fn zero_settle_is_immediate() {
        let mut w = Watch::default();
        w.observe(&d('1'), at(0), Duration::ZERO);
        assert!(matches!(
            w.observe(&d('2'), at(1), Duration::ZERO),
            Observation::Settled { .. }
        ));
    }
}
