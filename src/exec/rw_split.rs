//! The replicas of an `rw_split` executor, and which one a read goes to.
//!
//! Reads spread over the usable replicas in proportion to their weights; a replica that is
//! down, not replicating or too far behind ([`crate::backend::health`]) takes none, and
//! with none usable the read goes to the primary.

use tokio::sync::watch;

use crate::backend::health::Health;
use crate::backend::Pool;

/// One replica: its pool, its share of the reads, and what its monitor last found.
pub struct Replica {
    pub pool: Pool,
    pub weight: u32,
    pub health: watch::Receiver<Health>,
}

pub struct Replicas {
    pub replicas: Vec<Replica>,
}

impl Replicas {
    /// The replica a read goes to, by weight among the usable ones (`ticket` is a random
    /// number: which one it lands on); `None` when none is usable.
    pub fn pick(&self, ticket: u64) -> Option<usize> {
        let usable = |r: &Replica| r.health.borrow().usable();
        pick_weighted(
            self.replicas
                .iter()
                .map(|r| if usable(r) { r.weight } else { 0 }),
            ticket,
        )
    }

    /// Whether replica `i` may still take reads.
    pub fn usable(&self, i: usize) -> bool {
        self.replicas
            .get(i)
            .is_some_and(|r| r.health.borrow().usable())
    }
}

/// Which of the candidates (by weight; 0 = not a candidate) `ticket` lands on.
fn pick_weighted(weights: impl Iterator<Item = u32> + Clone, ticket: u64) -> Option<usize> {
    let total: u64 = weights.clone().map(u64::from).sum();
    if total == 0 {
        return None;
    }
    let mut at = ticket % total;
    for (i, w) in weights.enumerate() {
        let w = u64::from(w);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_spread_by_weight_over_the_usable_replicas() {
        let weights = [2u32, 0, 1];
        let mut counts = [0; 3];
        for ticket in 0..3_000u64 {
            let i = pick_weighted(weights.iter().copied(), ticket).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [2_000, 0, 1_000]);
        assert_eq!(pick_weighted([0u32, 0].iter().copied(), 7), None);
        assert_eq!(pick_weighted(std::iter::empty::<u32>(), 7), None);
        // Weights add up in 64 bits: no overflow at the largest.
        assert!(pick_weighted([u32::MAX, u32::MAX].iter().copied(), u64::MAX).is_some());
    }
}
