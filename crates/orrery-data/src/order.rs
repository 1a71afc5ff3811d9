//! The global sample order for streaming: a pure function of (seed, epoch,
//! the row-group sizes of the index), independent of the number of ranks.
//!
//! Each epoch puts the blocks (row groups, at most 64 clips as our writers
//! cut them) in a seeded order and streams their rows through a seeded
//! shuffle buffer of `buffer` rows: while the buffer is full, each incoming
//! row takes the place of a random one, which is emitted; at the end the
//! buffer drains in random order.
//!
//! Trade-off (documented in datasets/README.md): a reader needs only the
//! blocks that cover the next `buffer` rows of the stream, so memory is
//! bounded by the buffer plus one block per reader in flight; the price is
//! that two rows of one block land within about `buffer + block` positions
//! of each other. With `buffer >= rows` the order is a uniform permutation.
//! Global batch g is positions [g B, (g + 1) B) of the epoch's order and rank
//! r of w takes [g B + r B / w, g B + (r + 1) B / w): the same samples in
//! the same order on any number of ranks, so a cursor (epoch, batch) resumes
//! on another world size.
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows of each block, in index order, and the shuffle buffer size.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalOrder {
    /// Rows per block (row group), in index order (files by path, then row groups).
    blocks: Vec<usize>,
    /// The first global row of each block, and the total at the end: [blocks + 1].
    starts: Vec<u64>,
    /// Seed of every epoch's order.
    seed: u64,
    /// Rows in the shuffle buffer.
    buffer: usize,
}

impl GlobalOrder {
    /// The order over `blocks` (rows per row group, in index order).
    pub fn new(blocks: Vec<usize>, seed: u64, buffer: usize) -> Self {
        let mut starts = Vec::with_capacity(blocks.len() + 1);
        let mut at = 0u64;
        for &n in &blocks {
            starts.push(at);
            at += n as u64;
        }
        starts.push(at);
        GlobalOrder {
            blocks,
            starts,
            seed,
            buffer,
        }
    }

    /// Rows in an epoch.
    pub fn rows(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// The first global row of `block`.
    pub fn first_row(&self, block: usize) -> u64 {
        self.starts[block]
    }

    /// The block holding global row `row`, and the row's place in it.
    pub fn locate(&self, row: u64) -> (usize, usize) {
        let block = self.starts.partition_point(|&s| s <= row) - 1;
        (block, (row - self.starts[block]) as usize)
    }

    fn rng(&self, epoch: u64, stream: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(
            self.seed
                ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        )
    }

    /// The blocks in the order epoch `epoch` streams them.
    pub fn block_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.blocks.len()).collect();
        order.shuffle(&mut self.rng(epoch, 1));
        order
    }

    /// Every global row once, in epoch `epoch`'s order.
    ///
    /// # Shapes
    /// -> [rows]
    pub fn epoch(&self, epoch: u64) -> Vec<u64> {
        let mut rng = self.rng(epoch, 2);
        let cap = self.buffer.max(1);
        let mut buf: Vec<u64> = Vec::with_capacity(cap.min(self.rows() as usize));
        let mut out = Vec::with_capacity(self.rows() as usize);
        for block in self.block_order(epoch) {
            for row in self.starts[block]..self.starts[block + 1] {
                if buf.len() < cap {
                    buf.push(row);
                } else {
                    let j = rng.random_range(0..cap);
                    out.push(std::mem::replace(&mut buf[j], row));
                }
            }
        }
        buf.shuffle(&mut rng);
        out.extend(buf);
        out
    }

    /// The positions [first, end) of the epoch's order that rank `rank` of
    /// `world` takes from global batch `batch` of `global_batch` rows.
    pub fn share(
        global_batch: usize,
        batch: u64,
        (rank, world): (usize, usize),
    ) -> std::ops::Range<usize> {
        let local = global_batch / world;
        let first = batch as usize * global_batch + rank * local;
        first..first + local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> Vec<Vec<usize>> {
        vec![
            vec![64; 10],
            vec![64, 64, 17, 64, 3, 64, 1],
            vec![5],
            (1..40).collect(),
        ]
    }

    #[test]
    fn each_epoch_is_a_permutation_and_a_pure_function() {
        for blocks in layouts() {
            for buffer in [0, 1, 7, 100, 10_000] {
                let order = GlobalOrder::new(blocks.clone(), 3, buffer);
                let e0 = order.epoch(0);
                let mut sorted = e0.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    (0..order.rows()).collect::<Vec<_>>(),
                    "{blocks:?} {buffer}"
                );
                assert_eq!(e0, GlobalOrder::new(blocks.clone(), 3, buffer).epoch(0));
                if order.rows() > 20 {
                    assert_ne!(e0, order.epoch(1), "epochs differ");
                    assert_ne!(
                        e0,
                        GlobalOrder::new(blocks.clone(), 4, buffer).epoch(0),
                        "seeds differ"
                    );
                }
            }
        }
    }

    /// A reader never needs a row more than `buffer` positions ahead of the
    /// block stream: what bounds the loader's memory.
    #[test]
    fn a_row_is_emitted_at_most_buffer_positions_after_it_is_streamed_in() {
        for blocks in layouts() {
            for buffer in [1, 7, 100] {
                let order = GlobalOrder::new(blocks.clone(), 9, buffer);
                // stream position of each row: blocks in block order, rows in order
                let mut pos = vec![0usize; order.rows() as usize];
                let mut k = 0;
                for b in order.block_order(0) {
                    for row in order.starts[b]..order.starts[b + 1] {
                        pos[row as usize] = k;
                        k += 1;
                    }
                }
                for (i, row) in order.epoch(0).into_iter().enumerate() {
                    assert!(
                        pos[row as usize] <= i + buffer,
                        "row {row} at {i}, streamed at {}",
                        pos[row as usize]
                    );
                }
            }
        }
    }

    #[test]
    fn rank_shares_tile_each_global_batch_on_any_world_size() {
        let order = GlobalOrder::new(vec![64, 64, 17, 64, 3], 1, 50).epoch(0);
        let b = 8;
        for batch in 0..(order.len() / b) as u64 {
            let global: Vec<u64> = order[GlobalOrder::share(b, batch, (0, 1))].to_vec();
            for world in [2, 4, 8] {
                let joined: Vec<u64> = (0..world)
                    .flat_map(|r| order[GlobalOrder::share(b, batch, (r, world))].to_vec())
                    .collect();
                assert_eq!(joined, global, "batch {batch}, world {world}");
            }
        }
    }

    #[test]
    fn locate_finds_each_rows_block() {
        let order = GlobalOrder::new(vec![3, 1, 4], 0, 4);
        let got: Vec<_> = (0..8).map(|r| order.locate(r)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 0),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3)
            ]
        );
    }

    /// With a buffer as large as the epoch every row is equally likely at
    /// every position: row 0's position over many seeds spreads evenly.
    #[test]
    fn a_full_buffer_gives_a_uniform_permutation() {
        let (n, trials) = (16usize, 4000u64);
        let mut counts = vec![0usize; n];
        for seed in 0..trials {
            let e = GlobalOrder::new(vec![4; 4], seed, n).epoch(0);
            counts[e.iter().position(|&r| r == 0).unwrap()] += 1;
        }
        let expect = trials as f64 / n as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expect).powi(2) / expect)
            .sum();
        // 15 degrees of freedom: chi2 > 37.7 has probability 0.001
        assert!(chi2 < 37.7, "chi2 {chi2}, counts {counts:?}");
    }
}
