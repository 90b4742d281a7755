//! Merge-sort: the rows of several routes, each ordered by the same keys, as one ordered
//! stream; with no keys, one route's rows after another's.
//!
//! It holds one row per route, whatever the size of the result.

use std::cmp::Ordering;

use super::compare::Order;
use super::route::{Route, Row, RowError};

/// One ORDER BY key, resolved against the result's columns.
#[derive(Debug, Clone)]
pub struct Key {
    pub value: usize,
    pub weight: usize,
    pub descending: bool,
    pub order: Order,
}

/// Compares two rows by `keys`, as ORDER BY does: NULL first when ascending.
pub fn compare(a: &Row, b: &Row, keys: &[Key]) -> Ordering {
    for k in keys {
        let o = match (a.cell(k.value), b.cell(k.value)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => k.order.compare(x, y, a.cell(k.weight), b.cell(k.weight)),
        };
        let o = if k.descending { o.reverse() } else { o };
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

pub struct MergeSort<'r, 'c> {
    routes: &'r mut [Route<'c>],
    keys: Vec<Key>,
    heads: Vec<Option<Row>>,
    started: bool,
    /// Without keys: the route being read.
    current: usize,
}

/// A row could not be read from route `shard`.
#[derive(Debug)]
pub struct MergeError {
    pub shard: usize,
    pub error: RowError,
}

impl<'r, 'c> MergeSort<'r, 'c> {
    pub fn new(routes: &'r mut [Route<'c>], keys: Vec<Key>) -> Self {
        let heads = routes.iter().map(|_| None).collect();
        MergeSort {
            routes,
            keys,
            heads,
            started: false,
            current: 0,
        }
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    async fn pull(&mut self, i: usize) -> Result<Option<Row>, MergeError> {
        let shard = self.routes[i].shard;
        self.routes[i]
            .next()
            .await
            .map_err(|error| MergeError { shard, error })
    }

    pub async fn next(&mut self) -> Result<Option<Row>, MergeError> {
        if self.keys.is_empty() {
            while self.current < self.routes.len() {
                if let Some(row) = self.pull(self.current).await? {
                    return Ok(Some(row));
                }
                self.current += 1;
            }
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            for i in 0..self.routes.len() {
                self.heads[i] = self.pull(i).await?;
            }
        }
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(row) = head else { continue };
            best = match best {
                Some(b) => {
                    let current = self.heads[b].as_ref().map(|r| compare(row, r, &self.keys));
                    if current == Some(Ordering::Less) {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
                None => Some(i),
            };
        }
        let Some(i) = best else { return Ok(None) };
        let next = self.pull(i).await?;
        Ok(std::mem::replace(&mut self.heads[i], next))
    }
}
