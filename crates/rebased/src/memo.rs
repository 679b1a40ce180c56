//! A value kept while what it was made from has not moved.
//!
//! The read model keeps answers that are costly to make (every image's
//! summary, the whole rendered list) under a key of what they were made
//! from: the store's generation, the config in force and the jobs. This is
//! the one place that decides when such an answer is used again, and that
//! concurrent requests make it once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::live::lock;

/// One kept value and what decides whether it is still good.
pub struct Memo<K, T> {
    slot: Mutex<Option<Made<K, T>>>,
    /// Held while the value is made, so concurrent callers make it once.
    making: Mutex<()>,
    /// Kept at most this long whatever the key, for a value made from
    /// something no key sees move (a Dockerfile's edit is no store write).
    max_age: Option<Duration>,
}

struct Made<K, T> {
    key: K,
    /// Held so that an address in the key (the config's) is not reused by
    /// another value while this one is kept.
    _holds: Arc<dyn std::any::Any + Send + Sync>,
    at: Instant,
    value: T,
}

impl<K: PartialEq + Copy, T: Clone> Memo<K, T> {
    /// A memo whose value is good while its key is unchanged and, with
    /// `max_age`, no longer than that.
    pub fn new(max_age: Option<Duration>) -> Self {
        Self {
            slot: Mutex::new(None),
            making: Mutex::new(()),
            max_age,
        }
    }

    /// The kept value if it was made under `key()` and is young enough;
    /// else the value `make` makes, handed the stale one if any (for a
    /// size to start from). `holds` is kept with the value (cloned only
    /// when a value is made).
    ///
    /// The key is read before `make` reads anything: a write during the
    /// reads moves the key, so the value is made again by the next call.
    /// A caller that waited while another made the value takes it, young
    /// or not, if its making began after this call arrived: it read
    /// everything this call would have, so a making slower than `max_age`
    /// does not make every waiter make it again in turn. The stale value
    /// is let go before `make` runs, so the two are not both held by the
    /// memo (callers in flight keep their own clones).
    pub fn get<H: std::any::Any + Send + Sync, E>(
        &self,
        key: impl Fn() -> K,
        holds: &Arc<H>,
        make: impl FnOnce(Option<T>) -> Result<T, E>,
    ) -> Result<T, E> {
        let arrived = Instant::now();
        if let Some(v) = self.kept(key(), None) {
            return Ok(v);
        }
        let _making = lock(&self.making);
        // Another caller may have made it while this one waited.
        let key = key();
        if let Some(v) = self.kept(key, Some(arrived)) {
            return Ok(v);
        }
        let stale = lock(&self.slot).take().map(|m| m.value);
        let at = Instant::now();
        let value = make(stale)?;
        *lock(&self.slot) = Some(Made {
            key,
            _holds: Arc::clone(holds) as Arc<dyn std::any::Any + Send + Sync>,
            at,
            value: value.clone(),
        });
        Ok(value)
    }

    /// Lets the value go if it is older than `max_age`: no call would use
    /// it again, and a large one is not held until the next call. True if
    /// it did.
    pub fn forget_old(&self) -> bool {
        let mut slot = lock(&self.slot);
        let old = slot
            .as_ref()
            .is_some_and(|m| self.max_age.is_some_and(|a| m.at.elapsed() >= a));
        if old {
            *slot = None;
        }
        old
    }

    /// The value made under `key`, if it is young enough or its making
    /// began at or after `begun_after`.
    fn kept(&self, key: K, begun_after: Option<Instant>) -> Option<T> {
        lock(&self.slot)
            .as_ref()
            .filter(|m| {
                let young = self.max_age.is_none_or(|a| m.at.elapsed() < a);
                m.key == key && (young || begun_after.is_some_and(|t| m.at >= t))
            })
            .map(|m| m.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn holds() -> Arc<()> {
        Arc::new(())
    }

    #[test]
    fn made_again_only_when_the_key_moves() {
        let memo: Memo<u32, u32> = Memo::new(None);
        let key = Cell::new(1);
        let made = Cell::new(0);
        let get = || {
            memo.get(
                || key.get(),
                &holds(),
                |stale: Option<u32>| -> Result<u32, ()> {
                    made.set(made.get() + 1);
                    Ok(stale.unwrap_or(0) + 10)
                },
            )
        };
        assert_eq!(get(), Ok(10));
        assert_eq!(get(), Ok(10));
        assert_eq!(made.get(), 1);
        key.set(2);
        // Made again, handed the stale value.
        assert_eq!(get(), Ok(20));
        assert_eq!(get(), Ok(20));
        assert_eq!(made.get(), 2);
    }

    #[test]
    fn a_failed_make_keeps_nothing_and_is_tried_again() {
        let memo: Memo<u32, u32> = Memo::new(None);
        assert_eq!(memo.get(|| 1, &holds(), |_| Err("store")), Err("store"));
        assert_eq!(
            memo.get(|| 1, &holds(), |stale| Ok::<_, ()>(stale.unwrap_or(7))),
            Ok(7)
        );
    }

    #[test]
    fn an_old_value_is_made_again_whatever_the_key() {
        let memo: Memo<u32, u32> = Memo::new(Some(Duration::from_millis(300)));
        let made = Cell::new(0);
        let get = || {
            memo.get(
                || 1,
                &holds(),
                |_| -> Result<u32, ()> {
                    made.set(made.get() + 1);
                    Ok(made.get())
                },
            )
        };
        assert_eq!(get(), Ok(1));
        assert_eq!(get(), Ok(1));
        std::thread::sleep(Duration::from_millis(310));
        assert_eq!(get(), Ok(2));
    }

    #[test]
    fn waiters_take_a_value_begun_after_they_came_however_old() {
        // Every value is old at once; each making takes 200 ms.
        let memo: Memo<u32, u32> = Memo::new(Some(Duration::from_millis(1)));
        let made = std::sync::atomic::AtomicU32::new(0);
        let get = || {
            memo.get(
                || 1,
                &holds(),
                |_| -> Result<u32, ()> {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
                },
            )
        };
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(get(), Ok(1)));
            // These come while the first is made: its making began before
            // them, so one of them makes the value again and the others
            // take that one.
            std::thread::sleep(Duration::from_millis(20));
            for _ in 0..4 {
                s.spawn(|| assert_eq!(get(), Ok(2)));
            }
        });
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn only_an_old_value_is_forgotten() {
        let young: Memo<u32, Arc<u32>> = Memo::new(Some(Duration::from_secs(3600)));
        let kept = young
            .get(|| 1, &holds(), |_| Ok::<_, ()>(Arc::new(5)))
            .expect("made");
        assert!(!young.forget_old());
        assert_eq!(Arc::strong_count(&kept), 2, "still kept by the memo");

        let old: Memo<u32, Arc<u32>> = Memo::new(Some(Duration::from_millis(10)));
        let kept = old
            .get(|| 1, &holds(), |_| Ok::<_, ()>(Arc::new(5)))
            .expect("made");
        std::thread::sleep(Duration::from_millis(20));
        assert!(old.forget_old());
        assert_eq!(Arc::strong_count(&kept), 1, "let go by the memo");

        let keyed: Memo<u32, Arc<u32>> = Memo::new(None);
        let kept = keyed
            .get(|| 1, &holds(), |_| Ok::<_, ()>(Arc::new(5)))
            .expect("made");
        assert!(!keyed.forget_old());
        assert_eq!(Arc::strong_count(&kept), 2, "no age, never old");
    }

    #[test]
    fn concurrent_callers_make_it_once() {
        let memo: Memo<u32, u32> = Memo::new(None);
        let made = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = memo.get(
                        || 1,
                        &holds(),
                        |_| -> Result<u32, ()> {
                            std::thread::sleep(Duration::from_millis(20));
                            Ok(made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
                        },
                    );
                    assert_eq!(v, Ok(1));
                });
            }
        });
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
