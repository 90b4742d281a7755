//! Snowflake ids for a sharded table's generated column (`key_generator: snowflake`).
//!
//! ```text
//! 0 | milliseconds since 2024-01-01 (41 bits) | worker (10 bits) | sequence (12 bits)
//! ```
//!
//! Unique across sidecars as long as each has its own `worker_id` (the executor's), and
//! increasing within one: a clock that goes back is not followed (ids go on from the last
//! millisecond used), and more than 4,096 ids in one millisecond borrow the next one.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z, in milliseconds since the Unix epoch.
const EPOCH_MS: u64 = 1_704_067_200_000;
const SEQUENCE_BITS: u32 = 12;
const WORKER_BITS: u32 = 10;
/// The largest worker id.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;

#[derive(Debug)]
pub struct Snowflake {
    worker: u64,
    /// The millisecond of the last id (since [`EPOCH_MS`]) and its sequence number.
    last: Mutex<(u64, u64)>,
}

impl Snowflake {
    /// A generator for worker `worker` (at most [`MAX_WORKER`]; larger values are cut to
    /// their low bits).
    pub fn new(worker: u16) -> Snowflake {
        Snowflake {
            worker: u64::from(worker & MAX_WORKER),
            last: Mutex::new((0, 0)),
        }
    }

    /// The next id.
    pub fn next(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.next_at(now)
    }

    /// The next id when the clock reads `now_ms` (milliseconds since the Unix epoch).
    fn next_at(&self, now_ms: u64) -> i64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms.saturating_sub(EPOCH_MS);
        let (ms, seq) = if now > last.0 {
            (now, 0)
        } else if last.1 + 1 < (1 << SEQUENCE_BITS) {
            // The same millisecond, or the clock went back: count on from the last one.
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, 0)
        };
        *last = (ms, seq);
        ((ms << (WORKER_BITS + SEQUENCE_BITS)) | (self.worker << SEQUENCE_BITS) | seq) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_even_when_the_clock_goes_back() {
        let g = Snowflake::new(5);
        let t = EPOCH_MS + 1_000;
        let mut last = 0;
        // Many in one millisecond, then the clock a second back, then forward again.
        for now in std::iter::repeat_n(t, 5_000)
            .chain(std::iter::repeat_n(t - 1_000, 10))
            .chain([t + 10])
        {
            let id = g.next_at(now);
            assert!(id > last, "{id} after {last}");
            assert_eq!((id >> SEQUENCE_BITS) & i64::from(MAX_WORKER), 5);
            last = id;
        }
        // Two workers never give the same id.
        let (a, b) = (Snowflake::new(1), Snowflake::new(2));
        assert_ne!(a.next_at(t), b.next_at(t));
        assert!(Snowflake::new(0).next() > 0);
    }
}
