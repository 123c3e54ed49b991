//! A small keyed token-bucket limiter.
//!
//! Why not `governor`: we need two limiters with a few thousand keys at most, a hard
//! bound on memory (governor's keyed store grows until `retain_recent` is called) and
//! an injectable clock for deterministic tests. That is forty lines here.
//!
//! Each key has a bucket holding up to `per_minute` tokens, refilled continuously at
//! `per_minute / 60` tokens a second. A bucket that has refilled completely carries no
//! information, so it is dropped when the table is full; if the table is still full,
//! the request is refused (fail closed) rather than forgetting a limited key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A keyed token bucket.
pub(crate) struct RateLimiter<K> {
    buckets: Mutex<HashMap<K, Bucket>>,
    capacity: f64,
    per_sec: f64,
    max_keys: usize,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_minute` requests a minute per key, bursts up to `per_minute`; at most
    /// `max_keys` keys tracked.
    pub(crate) fn new(per_minute: u32, max_keys: usize) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            buckets: Mutex::new(HashMap::new()),
            capacity,
            per_sec: capacity / 60.0,
            max_keys,
        }
    }

    /// Takes one token for `key` at `now`; false when the key is over its rate.
    pub(crate) fn check(&self, key: K, now: Instant) -> bool {
        // A panic while holding this lock cannot leave a bucket half-updated in a way
        // that matters (worst case one token too many), so a poisoned lock is used as is.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (capacity, per_sec) = (self.capacity, self.per_sec);
        let refill = |b: &mut Bucket| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * per_sec).min(capacity);
            b.last = now;
        };
        if !buckets.contains_key(&key) && buckets.len() >= self.max_keys {
            buckets.retain(|_, b| {
                refill(b);
                b.tokens < capacity
            });
            if buckets.len() >= self.max_keys {
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(3, 10);
        let t0 = Instant::now();
        assert!(rl.check("a", t0));
        assert!(rl.check("a", t0));
        assert!(rl.check("a", t0));
        assert!(!rl.check("a", t0));
        assert!(rl.check("b", t0), "keys are independent");
        // 3 a minute: one token every 20 s.
        assert!(!rl.check("a", t0 + Duration::from_secs(19)));
        // By 40 s two tokens have accrued.
        let t40 = t0 + Duration::from_secs(40);
        assert!(rl.check("a", t40));
        assert!(rl.check("a", t40));
        assert!(!rl.check("a", t40));
    }

    #[test]
    fn bounded_table_fails_closed_then_recovers() {
        let rl = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(rl.check(1, t0));
        assert!(rl.check(2, t0));
        assert!(!rl.check(3, t0), "table full of limited keys");
        // After a minute buckets 1 and 2 are full again and can be forgotten.
        assert!(rl.check(3, t0 + Duration::from_secs(61)));
    }
}
