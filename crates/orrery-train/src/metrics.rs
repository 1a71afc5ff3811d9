//! One logged step: a typed line, written the same way to metrics.jsonl
//! and TensorBoard, so the two records always agree.
//!
//! `step` counts the optimizer steps completed: the line of step 0 holds
//! the held-out loss before training, and the line of step k the mean
//! training loss of the steps since the previous logged line, ending with
//! step k, and the evaluations made after step k's update.
use serde::Serialize;

/// A metrics.jsonl line; absent quantities were not measured at this step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsLine {
    /// Optimizer steps completed.
    pub step: u64,
    /// Mean training loss since the previous logged line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate of this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Gradient norm before clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Clips per second since the previous logged line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_s: Option<f64>,
    /// Model TFLOP/s from the FLOPs count (divide by the peak for MFU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_tflops_per_s: Option<f64>,
    /// Mean seconds per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_time_s: Option<f64>,
    /// Fraction of the time spent waiting for data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_wait_frac: Option<f64>,
    /// Held-out loss (online weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_loss: Option<f64>,
    /// Next-frame held-out loss (world models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_frame_loss: Option<f64>,
    /// Next-frame loss with another clip's context minus with its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_gain: Option<f64>,
    /// Next-frame loss with another action minus with its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_gain: Option<f64>,
    /// Held-out loss of the EMA weights (at the end of a run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heldout_loss_ema: Option<f64>,
    /// Steps skipped so far in the run for a non-finite loss or gradient
    /// norm (nothing was updated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// Held-out loss (unweighted) with every frame at noise level t = the
    /// centres of 8 equal bins, 0.0625 to 0.9375.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_by_t: Option<[f64; 8]>,
}

/// The TensorBoard tags of [`MetricsLine::loss_by_t`], by level.
pub const LOSS_BY_T_TAGS: [&str; 8] = [
    "loss_by_t/t=0.06",
    "loss_by_t/t=0.19",
    "loss_by_t/t=0.31",
    "loss_by_t/t=0.44",
    "loss_by_t/t=0.56",
    "loss_by_t/t=0.69",
    "loss_by_t/t=0.81",
    "loss_by_t/t=0.94",
];

impl MetricsLine {
    /// The TensorBoard scalars of this line: (tag, value) for each
    /// quantity present.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        [
            ("train/loss", self.loss),
            ("train/lr", self.lr),
            ("train/grad_norm", self.grad_norm),
            ("perf/samples_per_s", self.samples_per_s),
            ("perf/model_tflops_per_s", self.model_tflops_per_s),
            ("perf/step_time_s", self.step_time_s),
            ("perf/data_wait_frac", self.data_wait_frac),
            ("eval/heldout_loss", self.heldout_loss),
            ("eval/next_frame_loss", self.next_frame_loss),
            ("eval/context_gain", self.context_gain),
            ("eval/action_gain", self.action_gain),
            ("eval/heldout_loss_ema", self.heldout_loss_ema),
            ("train/skipped_steps", self.skipped_steps.map(|n| n as f64)),
        ]
        .into_iter()
        .chain(
            LOSS_BY_T_TAGS
                .iter()
                .zip(self.loss_by_t.unwrap_or([f64::NAN; 8]))
                .map(|(tag, v)| (*tag, self.loss_by_t.map(|_| v))),
        )
        .filter_map(|(tag, v)| v.map(|v| (tag, v)))
        .collect()
    }

    /// Whether anything beyond the step is set.
    pub fn is_empty(&self) -> bool {
        self.scalars().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_match_tensorboard_tags() {
        let line = MetricsLine {
            step: 3,
            loss: Some(1.0),
            lr: Some(2.0),
            grad_norm: Some(3.0),
            samples_per_s: Some(4.0),
            model_tflops_per_s: Some(5.0),
            step_time_s: Some(6.0),
            data_wait_frac: Some(7.0),
            heldout_loss: Some(8.0),
            next_frame_loss: Some(9.0),
            context_gain: Some(10.0),
            action_gain: Some(11.0),
            heldout_loss_ema: Some(12.0),
            skipped_steps: Some(13),
            loss_by_t: Some([14.0; 8]),
        };
        let json = serde_json::to_value(&line).unwrap();
        let obj = json.as_object().unwrap();
        // Every scalar's tag ends with its JSON key, with the same value.
        for (tag, v) in line.scalars() {
            if let Some(k) = LOSS_BY_T_TAGS.iter().position(|t| *t == tag) {
                assert_eq!(obj["loss_by_t"][k].as_f64(), Some(v), "{tag}");
                continue;
            }
            let key = tag.split('/').nth(1).unwrap();
            assert_eq!(obj[key].as_f64(), Some(v), "{tag}");
        }
        assert_eq!(obj.len(), line.scalars().len() + 1 - 7);
        let empty = serde_json::to_string(&MetricsLine {
            step: 0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(empty, r#"{"step":0}"#);
    }
}
