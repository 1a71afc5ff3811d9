//! Which keys a query may see, decided by frame index alone, so that no
//! n x n table is needed: the blockwise kernel asks it about whole tiles
//! of queries x keys and skips the tiles it hides. Letters: s tokens per
//! frame (group), n = t * s tokens, q/k token indices.
use std::ops::Range;

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::AttentionMask;

/// A frame mask over tokens laid out frame by frame (`s` tokens each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMask {
    /// Tokens per frame group s.
    pub tokens_per_frame: usize,
    /// Frames a query sees, its own included, counting back
    /// (`usize::MAX`: every earlier frame, the frame-causal mask).
    pub window: usize,
}

/// What a tile of queries x keys is under a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// Every query sees every key: no mask to add.
    Visible,
    /// No query sees any key: the tile is skipped.
    Hidden,
    /// Some pairs are hidden: an additive bias tile is needed.
    Partial,
}

/// The additive logit for a hidden pair inside a partial tile. Finite (not
/// -inf), so a row whose keys in one tile are all hidden gives exp(0)
/// terms that the online softmax's rescaling multiplies by exactly 0 once
/// a visible key arrives (every query sees its own frame), never NaN.
pub const HIDDEN_LOGIT: f32 = -1.0e30;

impl FrameMask {
    /// The mask for `kind` (`None` for full attention); `window` counts
    /// frame groups and is used only by the sliding window.
    pub fn new(kind: AttentionMask, window: usize, tokens_per_frame: usize) -> Option<Self> {
        let window = match kind {
            AttentionMask::Full => return None,
            AttentionMask::FrameCausal => usize::MAX,
            AttentionMask::SlidingWindow => window,
        };
        Some(Self {
            tokens_per_frame,
            window,
        })
    }

    /// Whether query token `q` may not see key token `k`: the key's frame
    /// is later, or `window` or more frames earlier.
    pub fn hides(&self, q: usize, k: usize) -> bool {
        let (fq, fk) = (q / self.tokens_per_frame, k / self.tokens_per_frame);
        fk > fq || fq - fk >= self.window
    }

    /// The tile of queries `q` x keys `k` (non-empty ranges).
    pub fn tile(&self, q: &Range<usize>, k: &Range<usize>) -> Tile {
        let s = self.tokens_per_frame;
        let (q_lo, q_hi) = (q.start / s, (q.end - 1) / s); // query frames
        let (k_lo, k_hi) = (k.start / s, (k.end - 1) / s); // key frames
        if k_lo > q_hi || (q_lo >= k_hi && q_lo - k_hi >= self.window) {
            Tile::Hidden
        } else if k_hi <= q_lo && q_hi - k_lo < self.window {
            Tile::Visible
        } else {
            Tile::Partial
        }
    }

    /// The additive bias of a tile: 0 where the pair is visible,
    /// [`HIDDEN_LOGIT`] where hidden, row-major.
    ///
    /// # Shapes
    /// -> [q.len() * k.len()]
    pub fn bias(&self, q: &Range<usize>, k: &Range<usize>) -> Vec<f32> {
        q.clone()
            .flat_map(|qi| {
                k.clone().map(move |ki| {
                    if self.hides(qi, ki) {
                        HIDDEN_LOGIT
                    } else {
                        0.0
                    }
                })
            })
            .collect()
    }
}

impl FrameMask {
    /// The naive kernel's additive bias over `n` tokens: -inf where the
    /// mask hides the pair, 0 elsewhere.
    ///
    /// # Shapes
    /// -> [n, n]
    pub fn dense_bias<B: Backend>(&self, n: usize, device: &B::Device) -> Tensor<B, 2> {
        let bias: Vec<f32> = (0..n * n)
            .map(|i| {
                if self.hides(i / n, i % n) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(bias, [n, n]), device)
    }
}

/// `0..n` cut into consecutive ranges of `block` (the last may be shorter).
pub fn blocks(n: usize, block: usize) -> Vec<Range<usize>> {
    (0..n.div_ceil(block))
        .map(|i| i * block..((i + 1) * block).min(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tile's class agrees with asking pair by pair, for masks,
    /// block sizes that do and do not line up with frames.
    #[test]
    fn tiles_agree_with_pairs() {
        for (kind, window) in [
            (AttentionMask::FrameCausal, 0),
            (AttentionMask::SlidingWindow, 1),
            (AttentionMask::SlidingWindow, 2),
            (AttentionMask::SlidingWindow, 3),
        ] {
            for s in [1, 3, 4] {
                let mask = FrameMask::new(kind, window, s).unwrap();
                let n = 7 * s;
                for block in [1, 2, 3, 5, 8, n] {
                    for q in blocks(n, block) {
                        for k in blocks(n, block) {
                            let bias = mask.bias(&q, &k);
                            let hidden = bias.iter().filter(|&&x| x < 0.0).count();
                            let want = match hidden {
                                0 => Tile::Visible,
                                h if h == bias.len() => Tile::Hidden,
                                _ => Tile::Partial,
                            };
                            assert_eq!(
                                mask.tile(&q, &k),
                                want,
                                "{kind:?} w={window} s={s} {q:?} {k:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocks_cover_the_range() {
        assert_eq!(blocks(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(blocks(8, 4), vec![0..4, 4..8]);
        assert_eq!(blocks(3, 8), vec![0..3]);
    }
}
