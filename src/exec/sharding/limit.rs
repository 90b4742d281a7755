//! Limit: skips `offset` rows of the merged stream and passes at most `count` more.
//!
//! Each shard was asked for `offset + count` rows, enough for any place those rows can
//! take in the merged order; the offset can only be applied after the merge.

use crate::planner::sharding::plan;

#[derive(Debug, Clone, Copy)]
pub struct Limit {
    skip: u64,
    left: u64,
}

/// What to do with the next row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Skip,
    Pass,
    /// Nothing more is wanted.
    Stop,
}

impl Limit {
    pub fn new(l: Option<plan::Limit>) -> Limit {
        match l {
            Some(l) => Limit {
                skip: l.offset,
                left: l.count,
            },
            None => Limit {
                skip: 0,
                left: u64::MAX,
            },
        }
    }

    /// Whether no row will pass any more (to stop reading early).
    pub fn done(&self) -> bool {
        self.left == 0
    }

    pub fn admit(&mut self) -> Verdict {
        if self.left == 0 {
            Verdict::Stop
        } else if self.skip > 0 {
            self.skip -= 1;
            Verdict::Skip
        } else {
            self.left -= 1;
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_then_count() {
        let mut l = Limit::new(Some(plan::Limit {
            offset: 2,
            count: 2,
        }));
        let seen: Vec<Verdict> = (0..5).map(|_| l.admit()).collect();
        use Verdict::*;
        assert_eq!(seen, vec![Skip, Skip, Pass, Pass, Stop]);
        assert!(l.done());
        assert!(Limit::new(Some(plan::Limit {
            offset: 0,
            count: 0
        }))
        .done());
    }
}
