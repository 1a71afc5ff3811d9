//! Rollout scores that work on any data: for each generated frame, PSNR
//! and SSIM against the real frame, and the PSNR on the pixels that
//! changed since the last context frame (where a static background cannot
//! hide a moving object); each also for the baseline that copies the last
//! context frame. Frames are read as the pictures show them: values in
//! [-1, 1], a range of 2, in the data's own space (pixels for pixel data,
//! latents for latent data). Letters: n clips, k context frames, m
//! generated frames, c/h/w a frame's channels, height and width.
use serde::Serialize;

/// Peak-to-peak range of the values (frames live in [-1, 1]).
pub const RANGE: f64 = 2.0;
/// PSNR of a frame with no error (copying a static frame) is capped here,
/// so that averages stay finite.
pub const PSNR_CAP_DB: f64 = 100.0;
/// A pixel has changed when some channel moved by more than this (5% of
/// the range) since the last context frame.
pub const CHANGED: f32 = 0.1;
/// SSIM's window edge: scikit-image's default (uniform 7 x 7), or the
/// largest odd edge that fits a smaller frame.
pub const SSIM_WINDOW: usize = 7;

/// Mean squared error.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    sum / a.len().max(1) as f64
}

/// PSNR in dB of a mean squared error, for values of range [`RANGE`],
/// capped at [`PSNR_CAP_DB`].
pub fn psnr(mse: f64) -> f64 {
    if mse <= 0.0 {
        return PSNR_CAP_DB;
    }
    (10.0 * (RANGE * RANGE / mse).log10()).min(PSNR_CAP_DB)
}

/// The SSIM window edge for an h x w frame, `None` below 3 pixels.
pub fn ssim_window(h: usize, w: usize) -> Option<usize> {
    let edge = SSIM_WINDOW.min(h).min(w);
    let odd = if edge % 2 == 0 { edge - 1 } else { edge };
    (odd >= 3).then_some(odd)
}

/// SSIM (Wang et al. 2004) as scikit-image's `structural_similarity`
/// computes it by default: a uniform `win` x `win` window, sample
/// covariances, K1 = 0.01, K2 = 0.03, data range [`RANGE`], the mean over
/// the positions where the window fits, then over channels.
///
/// # Shapes
/// a, b: [c, h, w]
pub fn ssim(a: &[f32], b: &[f32], [c, h, w]: [usize; 3], win: usize) -> f64 {
    let np = (win * win) as f64;
    let cov_norm = np / (np - 1.0);
    let (c1, c2) = ((0.01 * RANGE).powi(2), (0.03 * RANGE).powi(2));
    let (rows, cols) = (h - win + 1, w - win + 1);
    let mut total = 0.0;
    for ch in 0..c {
        let (x, y) = (
            &a[ch * h * w..(ch + 1) * h * w],
            &b[ch * h * w..(ch + 1) * h * w],
        );
        let mut sum = 0.0;
        for r in 0..rows {
            for q in 0..cols {
                let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for dy in 0..win {
                    for dx in 0..win {
                        let i = (r + dy) * w + q + dx;
                        let (u, v) = (x[i] as f64, y[i] as f64);
                        sx += u;
                        sy += v;
                        sxx += u * u;
                        syy += v * v;
                        sxy += u * v;
                    }
                }
                let (ux, uy) = (sx / np, sy / np);
                let vx = cov_norm * (sxx / np - ux * ux);
                let vy = cov_norm * (syy / np - uy * uy);
                let vxy = cov_norm * (sxy / np - ux * uy);
                sum += (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
                    / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            }
        }
        total += sum / (rows * cols) as f64;
    }
    total / c as f64
}

/// The squared errors of `guesses` summed over the pixels of `frame` that
/// changed since `last` (every channel of such a pixel), in one pass, and
/// how many values that is.
///
/// # Shapes
/// frame, last, each guess: [c, h, w]
pub fn changed_errors<const N: usize>(
    frame: &[f32],
    last: &[f32],
    guesses: [&[f32]; N],
    c: usize,
) -> ([f64; N], usize) {
    let hw = frame.len() / c;
    let (mut sums, mut count) = ([0.0; N], 0);
    for p in 0..hw {
        let moved = (0..c).any(|ch| (frame[ch * hw + p] - last[ch * hw + p]).abs() > CHANGED);
        if moved {
            for ch in 0..c {
                let i = ch * hw + p;
                for (sum, guess) in sums.iter_mut().zip(&guesses) {
                    *sum += (frame[i] as f64 - guess[i] as f64).powi(2);
                }
                count += 1;
            }
        }
    }
    (sums, count)
}

/// One predictor's scores (the model's, or copying the last context frame).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    /// PSNR (dB) per generated frame, the mean over clips.
    pub psnr_by_frame: Vec<f64>,
    /// SSIM per generated frame, the mean over clips (empty for frames
    /// under 3 pixels).
    pub ssim_by_frame: Vec<f64>,
    /// PSNR (dB) on the values of pixels that changed since the last
    /// context frame, pooled over clips, per generated frame (`None` where
    /// nothing changed).
    pub changed_psnr_by_frame: Vec<Option<f64>>,
}

/// The rollout's scores on any data, flattened into rollout.json.
#[derive(Debug, Clone, Serialize)]
pub struct PixelScores {
    /// The model's PSNR, mean over generated frames (dB).
    pub psnr_db: f64,
    /// Copying the last context frame: PSNR (dB).
    pub psnr_copy_last_db: f64,
    /// The model's SSIM, mean over generated frames (`None` for frames
    /// under 3 pixels).
    pub ssim: Option<f64>,
    /// Copying the last context frame: SSIM.
    pub ssim_copy_last: Option<f64>,
    /// The SSIM window edge used (7 unless the frames are smaller).
    pub ssim_window: Option<usize>,
    /// The model's PSNR on the changed pixels, pooled over every generated
    /// frame (dB; `None` when nothing changed).
    pub changed_psnr_db: Option<f64>,
    /// Copying the last context frame: PSNR on the changed pixels (dB).
    pub changed_psnr_copy_last_db: Option<f64>,
    /// The share of pixels that changed since the last context frame, per
    /// generated frame (over clips).
    pub changed_share_by_frame: Vec<f64>,
    /// Generated frames where the model's PSNR beats copying.
    pub frames_model_beats_copy: usize,
    /// The model's per-frame scores.
    pub model: Scores,
    /// Copying the last context frame, per frame.
    pub copy_last: Scores,
}

/// Score `n` clips' `m` generated frames against the real ones, and the
/// copy-last-context-frame baseline. `real(i, f)` is clip i's frame f (k
/// context frames, then the m that were generated); `generated(i, j)` the
/// model's j-th generated frame.
///
/// # Shapes
/// every frame: [c, h, w]
pub fn score_frames<'a, 'b>(
    (n, k, m): (usize, usize, usize),
    [c, h, w]: [usize; 3],
    real: impl Fn(usize, usize) -> &'a [f32],
    generated: impl Fn(usize, usize) -> &'b [f32],
) -> PixelScores {
    let win = ssim_window(h, w);
    let mut model = Scores::default();
    let mut copy = Scores::default();
    let mut changed_share = Vec::new();
    // Pooled squared errors on changed values: (model, copy, count).
    let mut pooled = (0.0, 0.0, 0usize);
    for j in 0..m {
        let (mut p, mut pc, mut s, mut sc) = (0.0, 0.0, 0.0, 0.0);
        let (mut e, mut ec, mut count) = (0.0, 0.0, 0usize);
        for i in 0..n {
            let (truth, last, guess) = (real(i, k + j), real(i, k - 1), generated(i, j));
            p += psnr(mse(guess, truth));
            pc += psnr(mse(last, truth));
            if let Some(win) = win {
                s += ssim(guess, truth, [c, h, w], win);
                sc += ssim(last, truth, [c, h, w], win);
            }
            let ([err, err_copy], values) = changed_errors(truth, last, [guess, last], c);
            (e, ec, count) = (e + err, ec + err_copy, count + values);
        }
        let nf = n as f64;
        model.psnr_by_frame.push(p / nf);
        copy.psnr_by_frame.push(pc / nf);
        if win.is_some() {
            model.ssim_by_frame.push(s / nf);
            copy.ssim_by_frame.push(sc / nf);
        }
        let changed = |err: f64| (count > 0).then(|| psnr(err / count as f64));
        model.changed_psnr_by_frame.push(changed(e));
        copy.changed_psnr_by_frame.push(changed(ec));
        changed_share.push(count as f64 / (n * c * h * w) as f64);
        pooled = (pooled.0 + e, pooled.1 + ec, pooled.2 + count);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let pooled_psnr = |err: f64| (pooled.2 > 0).then(|| psnr(err / pooled.2 as f64));
    PixelScores {
        psnr_db: mean(&model.psnr_by_frame),
        psnr_copy_last_db: mean(&copy.psnr_by_frame),
        ssim: win.map(|_| mean(&model.ssim_by_frame)),
        ssim_copy_last: win.map(|_| mean(&copy.ssim_by_frame)),
        ssim_window: win,
        changed_psnr_db: pooled_psnr(pooled.0),
        changed_psnr_copy_last_db: pooled_psnr(pooled.1),
        changed_share_by_frame: changed_share,
        frames_model_beats_copy: model
            .psnr_by_frame
            .iter()
            .zip(&copy.psnr_by_frame)
            .filter(|(a, b)| a > b)
            .count(),
        model,
        copy_last: copy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_is_the_closed_form_and_capped() {
        // A constant error of 0.2 on a range of 2: 10 log10(4 / 0.04) = 20 dB.
        let a = vec![0.5f32; 48];
        let b = vec![0.7f32; 48];
        assert!((psnr(mse(&a, &b)) - 20.0).abs() < 1e-5);
        assert_eq!(psnr(mse(&a, &a)), PSNR_CAP_DB);
    }

    #[test]
    fn ssim_is_one_for_equal_frames_and_the_closed_form_for_constants() {
        let (c, h, w) = (3, 9, 8);
        let a: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 37) % 17) as f32 / 8.5 - 1.0)
            .collect();
        assert!((ssim(&a, &a, [c, h, w], 7) - 1.0).abs() < 1e-12);
        // Two constant frames x and y: no variance, so SSIM is the
        // luminance term (2xy + C1) / (x^2 + y^2 + C1).
        let (x, y) = (0.25f32, -0.5f32);
        let c1 = (0.01 * RANGE).powi(2);
        let want =
            (2.0 * x as f64 * y as f64 + c1) / ((x as f64).powi(2) + (y as f64).powi(2) + c1);
        let got = ssim(&vec![x; c * h * w], &vec![y; c * h * w], [c, h, w], 7);
        assert!((got - want).abs() < 1e-12, "{got} {want}");
        assert_eq!(ssim_window(32, 32), Some(7));
        assert_eq!(ssim_window(4, 6), Some(3));
        assert_eq!(ssim_window(2, 8), None);
    }

    #[test]
    fn copying_a_static_scene_is_perfect_but_not_on_a_moving_object() {
        // 1 channel, 4 x 4: a static background at 0 and an object (1.0)
        // that moves one pixel right in the generated frame.
        let (n, k, m) = (1, 1, 1);
        let mut ctx = vec![0f32; 16];
        ctx[5] = 1.0;
        let mut next = vec![0f32; 16];
        next[6] = 1.0;
        let frames = [ctx.clone(), next.clone()];
        // A model that gets the object right, and one that erases it.
        let right = score_frames((n, k, m), [1, 4, 4], |_, f| &frames[f], |_, _| &next);
        let erased = vec![0f32; 16];
        let blank = score_frames((n, k, m), [1, 4, 4], |_, f| &frames[f], |_, _| &erased);
        assert_eq!(right.changed_share_by_frame, vec![2.0 / 16.0]);
        assert_eq!(right.changed_psnr_db, Some(PSNR_CAP_DB));
        // Copying puts the object back where it was: both changed pixels
        // are off by 1 (MSE 1, 10 log10(4) dB).
        let copy = right.changed_psnr_copy_last_db.unwrap();
        assert!((copy - 10.0 * 4f64.log10()).abs() < 1e-9);
        // Erasing it is wrong on one of the two changed pixels (MSE 1/2),
        // while on the whole frame (MSE 1/16) it looks better than copying.
        let blank_changed = blank.changed_psnr_db.unwrap();
        assert!((blank_changed - 10.0 * 8f64.log10()).abs() < 1e-9);
        assert!(blank.psnr_db > blank.psnr_copy_last_db);
        assert_eq!(right.frames_model_beats_copy, 1);
    }
}
