//! Sort: combined rows ordered by keys the shards could not order them by (an aggregate,
//! or GROUP BY columns in another order than the groups come in). It must hold the rows,
//! so it holds at most `cap` of them; under a LIMIT it keeps only the rows that can still
//! be among the first `offset + count`.

use super::merge_sort::{compare, Key};
use super::route::Row;
use crate::planner::sharding::plan::Limit;

/// More rows than the sort may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the merge across shards would hold more than {0} rows (max_merge_rows); narrow the query or raise the limit")]
pub struct TooManyRows(pub u64);

pub struct Sort {
    keys: Vec<Key>,
    rows: Vec<Row>,
    cap: usize,
    /// Under a LIMIT, how many of the first rows matter.
    keep: Option<usize>,
    limit: Option<Limit>,
}

impl Sort {
    pub fn new(keys: Vec<Key>, cap: u64, limit: Option<Limit>) -> Sort {
        let keep =
            limit.map(|l| usize::try_from(l.offset.saturating_add(l.count)).unwrap_or(usize::MAX));
        Sort {
            keys,
            rows: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            keep,
            limit,
        }
    }

    pub fn push(&mut self, row: Row) -> Result<(), TooManyRows> {
        if self.keep == Some(0) {
            return Ok(());
        }
        self.rows.push(row);
        if let Some(keep) = self.keep {
            // Cut back to the best `keep` once twice as many are held (or the cap is
            // reached): each row is sorted a bounded number of times.
            if self.rows.len() >= keep.saturating_mul(2).min(self.cap.saturating_add(1)) {
                self.order();
                self.rows.truncate(keep);
            }
        }
        if self.rows.len() > self.cap {
            return Err(TooManyRows(self.cap as u64));
        }
        Ok(())
    }

    fn order(&mut self) {
        let keys = &self.keys;
        // Stable, as the groups came in their own order.
        self.rows.sort_by(|a, b| compare(a, b, keys));
    }

    /// The rows in order, with the LIMIT applied.
    pub fn finish(mut self) -> impl Iterator<Item = Row> {
        self.order();
        let (offset, count) = self.limit.map_or((0, usize::MAX), |l| {
            (
                usize::try_from(l.offset).unwrap_or(usize::MAX),
                usize::try_from(l.count).unwrap_or(usize::MAX),
            )
        });
        self.rows.into_iter().skip(offset).take(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::sharding::compare::Order;
    use crate::wire::response::put_lenenc_bytes;
    use bytes::Bytes;

    fn row(n: i64) -> Row {
        let mut p = Vec::new();
        put_lenenc_bytes(&mut p, n.to_string().as_bytes());
        Row::parse(Bytes::from(p)).unwrap()
    }

    fn key(descending: bool) -> Vec<Key> {
        vec![Key {
            value: 0,
            weight: 0,
            descending,
            order: Order::Integer,
        }]
    }

    fn values(s: Sort) -> Vec<String> {
        s.finish()
            .map(|r| String::from_utf8(r.cell(0).unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn sorts_then_limits() {
        let mut s = Sort::new(
            key(true),
            100,
            Some(Limit {
                offset: 1,
                count: 2,
            }),
        );
        for n in [5, 1, 9, 3, 7, 2, 8] {
            s.push(row(n)).unwrap();
        }
        assert!(s.rows.len() <= 6);
        assert_eq!(values(s), ["8", "7"]);
    }

    #[test]
    fn holds_at_most_its_cap() {
        let mut s = Sort::new(key(false), 3, None);
        for n in 0..3 {
            s.push(row(n)).unwrap();
        }
        assert_eq!(s.push(row(9)), Err(TooManyRows(3)));
        // A LIMIT under the cap keeps it from being reached.
        let mut s = Sort::new(
            key(false),
            3,
            Some(Limit {
                offset: 0,
                count: 1,
            }),
        );
        for n in (0..50).rev() {
            s.push(row(n)).unwrap();
        }
        assert_eq!(values(s), ["0"]);
    }
}
