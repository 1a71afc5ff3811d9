//! The sprite world's agent scores for a rollout: where the generated
//! agent is against the ground truth of `orrery data synth`'s world, and
//! whether it moved the commanded way. Only for data that generator made
//! (its metadata says so, and every clip has `agent_xy`). Letters: k
//! context frames, m generated frames, c/h/w a frame's size.
use orrery_data::synth::locate_agent;
use orrery_data::Clip;
use serde::Serialize;

/// The agent scores of a rollout, flattened into rollout.json.
#[derive(Debug, Clone, Serialize)]
pub struct AgentScores {
    /// Mean agent-position error of the model, pixels.
    pub agent_error_px: f64,
    /// Mean error of copying the last context frame, pixels.
    pub agent_error_copy_last_px: f64,
    /// Mean model error per generated frame index.
    pub agent_error_by_frame: Vec<f64>,
    /// Mean copy-last error per generated frame index.
    pub agent_error_copy_last_by_frame: Vec<f64>,
    /// Generated frames where no agent was found (counted at half the frame diagonal).
    pub agent_lost: usize,
    /// Of generated frames where the true agent moved, the fraction where the
    /// generated agent moved the same way (sign of the larger axis); `None`
    /// when the agent never moved.
    pub agent_direction_accuracy: Option<f64>,
}

/// Whether the agent scores apply: data from the synthetic sprite world
/// (generator metadata) with ground-truth positions in every clip.
pub fn applies(meta: &orrery_data::DatasetMeta, clips: &[&Clip]) -> bool {
    meta.generator.is_some() && clips.iter().all(|c| c.agent_xy.is_some())
}

/// Score the generated frames' agents against the truth.
pub fn score<'a>(
    clips: &[&Clip],
    k: usize,
    m: usize,
    c: usize,
    h: usize,
    w: usize,
    gen_frame: impl Fn(usize, usize) -> &'a [f32],
) -> AgentScores {
    let penalty = ((h * h + w * w) as f64).sqrt() / 2.0;
    let (mut model_by, mut copy_by) = (vec![0.0; m], vec![0.0; m]);
    let (mut lost, mut moves, mut right_way) = (0, 0, 0);
    let dist =
        |a: (f32, f32), b: (f32, f32)| (((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)) as f64).sqrt();
    for (i, clip) in clips.iter().enumerate() {
        let Some(xy) = clip.agent_xy.as_ref() else {
            continue; // not reached: `applies` checked every clip
        };
        let truth = |f: usize| (xy[2 * f], xy[2 * f + 1]);
        let mut prev = Some(truth(k - 1));
        for j in 0..m {
            let found = if c == 3 {
                locate_agent(gen_frame(i, j), h, w)
            } else {
                None
            };
            model_by[j] += found.map(|p| dist(p, truth(k + j))).unwrap_or(penalty);
            copy_by[j] += dist(truth(k - 1), truth(k + j));
            lost += found.is_none() as usize;
            let true_move = (
                truth(k + j).0 - truth(k + j - 1).0,
                truth(k + j).1 - truth(k + j - 1).1,
            );
            if true_move != (0.0, 0.0) {
                moves += 1;
                if let (Some(p), Some(q)) = (prev, found) {
                    let gen_move = (q.0 - p.0, q.1 - p.1);
                    let axis_x = true_move.0.abs() > true_move.1.abs();
                    let (t, g) = if axis_x {
                        (true_move.0, gen_move.0)
                    } else {
                        (true_move.1, gen_move.1)
                    };
                    right_way += (t.signum() == g.signum() && g.abs() > 0.5) as usize;
                }
            }
            prev = found;
        }
    }
    let n = clips.len() as f64;
    model_by
        .iter_mut()
        .chain(copy_by.iter_mut())
        .for_each(|v| *v /= n);
    AgentScores {
        agent_error_px: model_by.iter().sum::<f64>() / m as f64,
        agent_error_copy_last_px: copy_by.iter().sum::<f64>() / m as f64,
        agent_error_by_frame: model_by,
        agent_error_copy_last_by_frame: copy_by,
        agent_lost: lost,
        agent_direction_accuracy: (moves > 0).then(|| right_way as f64 / moves as f64),
    }
}
