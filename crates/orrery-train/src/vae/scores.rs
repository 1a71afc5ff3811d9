//! How good an autoencoder's reconstructions are, on held-out clips: PSNR
//! and SSIM against the real frames (as the rollout scores compute them),
//! the same PSNR for a blurred frame (the trivial baseline of the same
//! compression: each s x s block averaged, then bilinear upsampling), and
//! sharpness as the share of a frame's energy above a 3 x 3 box filter's
//! pass band, for the decoded and the real frames. Letters: c channels,
//! h/w size, s spatial downsampling.
use serde::Serialize;

use crate::scores::{mse, psnr, ssim, ssim_window};

/// Reconstruction scores, means over every held-out frame.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ReconScores {
    /// PSNR (dB) of the decoded frames.
    pub psnr_db: f64,
    /// SSIM of the decoded frames.
    pub ssim: f64,
    /// PSNR (dB) of the blurred frames.
    pub blur_psnr_db: f64,
    /// High-frequency share of the decoded frames' energy.
    pub high_freq_decoded: f64,
    /// High-frequency share of the real frames' energy.
    pub high_freq_real: f64,
    /// Frames scored.
    pub frames: usize,
}

impl ReconScores {
    /// The decoded frames' high-frequency energy over the real ones' (1 =
    /// as sharp as the real frames; blurry reconstructions score below).
    pub fn sharpness(&self) -> f64 {
        self.high_freq_decoded / self.high_freq_real.max(1e-12)
    }
}

/// Each s x s block of a [c, h, w] frame averaged, then upsampled back
/// bilinearly (half-pixel centres, edges clamped).
pub fn blurred(frame: &[f32], [c, h, w]: [usize; 3], s: usize) -> Vec<f32> {
    let (hs, ws) = (h / s, w / s);
    let mut small = vec![0f32; c * hs * ws];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                small[(ch * hs + y / s) * ws + x / s] += frame[(ch * h + y) * w + x];
            }
        }
    }
    small.iter_mut().for_each(|v| *v /= (s * s) as f32);
    let coord = |o: usize, n: usize| {
        let p = ((o as f32 + 0.5) / s as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let i = (p.floor() as usize).min(n - 1);
        (i, (i + 1).min(n - 1), p - i as f32)
    };
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            let (y0, y1, fy) = coord(y, hs);
            for x in 0..w {
                let (x0, x1, fx) = coord(x, ws);
                let at = |yy: usize, xx: usize| small[(ch * hs + yy) * ws + xx];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[(ch * h + y) * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

/// The share of a [c, h, w] frame's energy (about each channel's mean) in
/// its difference from a 3 x 3 box filter (edges clamped): near 0 for a
/// smooth frame, larger for sharp edges and texture.
pub fn high_freq_share(frame: &[f32], [c, h, w]: [usize; 3]) -> f64 {
    let (mut high, mut total) = (0.0f64, 0.0f64);
    for ch in 0..c {
        let plane = &frame[ch * h * w..(ch + 1) * h * w];
        let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64;
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0.0f64;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        sum += plane[yy * w + xx] as f64;
                    }
                }
                let v = plane[y * w + x] as f64;
                high += (v - sum / 9.0).powi(2);
                total += (v - mean).powi(2);
            }
        }
    }
    if total > 0.0 {
        high / total
    } else {
        0.0
    }
}

/// Scores of `decoded` frames against `real` ones, both [n, c, h, w]
/// row-major, for spatial downsampling `s`.
pub fn score(real: &[f32], decoded: &[f32], chw: [usize; 3], s: usize) -> ReconScores {
    let len = chw.iter().product::<usize>();
    let n = real.len() / len.max(1);
    let win = ssim_window(chw[1], chw[2]);
    let mut out = ReconScores {
        frames: n,
        ..Default::default()
    };
    for i in 0..n {
        let (r, d) = (
            &real[i * len..(i + 1) * len],
            &decoded[i * len..(i + 1) * len],
        );
        out.psnr_db += psnr(mse(r, d));
        out.ssim += win.map_or(f64::NAN, |win| ssim(r, d, chw, win));
        out.blur_psnr_db += psnr(mse(r, &blurred(r, chw, s)));
        out.high_freq_decoded += high_freq_share(d, chw);
        out.high_freq_real += high_freq_share(r, chw);
    }
    let k = n.max(1) as f64;
    out.psnr_db /= k;
    out.ssim /= k;
    out.blur_psnr_db /= k;
    out.high_freq_decoded /= k;
    out.high_freq_real /= k;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blurred_constant_block_frame_is_itself() {
        // Constant on each 4 x 4 block and linear between block centres is
        // out of reach; a constant frame is not.
        let f = vec![0.25f32; 3 * 8 * 8];
        assert_eq!(blurred(&f, [3, 8, 8], 4), f);
        assert_eq!(high_freq_share(&f, [3, 8, 8]), 0.0);
    }

    #[test]
    fn blurring_keeps_block_means_and_loses_a_checkerboard() {
        let (h, w) = (8, 8);
        let checker: Vec<f32> = (0..h * w)
            .map(|i| if (i / w + i % w) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let b = blurred(&checker, [1, h, w], 4);
        assert!(b.iter().all(|v| v.abs() < 1e-6), "{b:?}");
        // A checkerboard is all high frequency: its 3 x 3 mean is +-1/9
        // (+-1/3 or so at the clamped edges), so most energy is above it.
        let share = high_freq_share(&checker, [1, h, w]);
        assert!(share > 0.7, "{share}");
        // A linear ramp is smooth: little energy above the box filter.
        let ramp: Vec<f32> = (0..h * w).map(|i| (i % w) as f32 / w as f32).collect();
        assert!(high_freq_share(&ramp, [1, h, w]) < 0.05);
    }

    #[test]
    fn scores_of_equal_frames_are_perfect() {
        let f: Vec<f32> = (0..2 * 3 * 8 * 8)
            .map(|i| ((i * 37 % 17) as f32 / 8.5) - 1.0)
            .collect();
        let s = score(&f, &f, [3, 8, 8], 4);
        assert_eq!(s.psnr_db, crate::scores::PSNR_CAP_DB);
        assert!((s.ssim - 1.0).abs() < 1e-9);
        assert!((s.sharpness() - 1.0).abs() < 1e-12);
        assert!(s.blur_psnr_db < 30.0);
        assert_eq!(s.frames, 2);
    }
}
