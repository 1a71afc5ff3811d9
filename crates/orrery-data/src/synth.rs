//! The embedded world: a small deterministic 2-D game rendered as video.
//!
//! A red agent (4x4 px) moves 2 px per frame by discrete actions
//! (0 noop, 1 up, 2 down, 3 left, 4 right), clamped at the walls; a blue ball
//! (3x3 px) bounces on its own; both sit on a fixed textured background. Pixels
//! are in [-1, 1], frames `[3, H, W]`. `action_ids[f]` is the action that moved
//! the agent from frame f-1 to frame f (frame 0's action is drawn but has no
//! effect), so a model conditioned on frame f's action can predict frame f.
//! The ground-truth agent centre of every frame is stored as `agent_xy`.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schema::{Clip, DatasetMeta};

/// Number of discrete actions of the world.
pub const NUM_ACTIONS: usize = 5;
/// Agent side in pixels.
pub const AGENT: usize = 4;
/// Ball side in pixels.
pub const BALL: usize = 3;
/// Agent speed in pixels per frame.
pub const SPEED: i64 = 2;
/// Agent colour (RGB in [-1, 1]).
pub const AGENT_RGB: [f32; 3] = [1.0, -0.9, -0.9];
const BALL_RGB: [f32; 3] = [-0.9, -0.3, 1.0];

/// Settings of `orrery data synth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Number of clips.
    pub clips: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frame width in pixels.
    pub width: usize,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Write each action as a continuous (dx, dy) vector (`actions`, A = 2)
    /// instead of an id (`action_ids`).
    #[serde(default)]
    pub continuous_actions: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            clips: 512,
            frames: 16,
            height: 32,
            width: 32,
            seed: 0,
            continuous_actions: false,
        }
    }
}

/// The continuous form of a discrete action: the agent's step direction
/// (dx, dy) in units of `SPEED` pixels (noop: 0, 0).
pub fn action_vector(action: i64) -> [f32; 2] {
    match action {
        1 => [0.0, -1.0],
        2 => [0.0, 1.0],
        3 => [-1.0, 0.0],
        4 => [1.0, 0.0],
        _ => [0.0, 0.0],
    }
}

impl SynthConfig {
    /// Check the sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.clips == 0 || self.frames == 0 {
            return Err("--clips and --frames must be positive".into());
        }
        if self.height < 12 || self.width < 12 || self.height > 512 || self.width > 512 {
            return Err(format!(
                "--size {} {}: each side must be between 12 and 512 pixels",
                self.height, self.width
            ));
        }
        Ok(())
    }

    /// File metadata for these clips.
    pub fn metadata(&self) -> DatasetMeta {
        DatasetMeta {
            scale: 1.0,
            shift: 0.0,
            num_actions: if self.continuous_actions {
                0
            } else {
                NUM_ACTIONS
            },
            num_classes: 0,
            action_dim: if self.continuous_actions { 2 } else { 0 },
            generator: Some(serde_json::to_string(self).expect("json")),
        }
    }
}

/// The background colour at a pixel: soft stripes and a checker, fixed.
fn background(y: usize, x: usize, c: usize) -> f32 {
    let (yf, xf) = (y as f32, x as f32);
    let stripes = (0.45 * xf + 0.9 * c as f32).sin() * (0.3 * yf).cos();
    let checker = if ((x / 4) + (y / 4)) % 2 == 0 {
        0.08
    } else {
        -0.08
    };
    -0.35 + 0.12 * c as f32 + 0.15 * stripes + checker
}

/// The state of the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorldState {
    /// Agent top-left (x, y).
    pub agent: (i64, i64),
    /// Ball top-left (x, y).
    pub ball: (i64, i64),
    /// Ball velocity.
    pub ball_v: (i64, i64),
}

impl WorldState {
    /// Advance one frame under `action`.
    pub fn step(&mut self, action: i64, h: usize, w: usize) {
        let (dx, dy) = match action {
            1 => (0, -SPEED),
            2 => (0, SPEED),
            3 => (-SPEED, 0),
            4 => (SPEED, 0),
            _ => (0, 0),
        };
        self.agent.0 = (self.agent.0 + dx).clamp(0, (w - AGENT) as i64);
        self.agent.1 = (self.agent.1 + dy).clamp(0, (h - AGENT) as i64);
        for (pos, vel, max) in [
            (&mut self.ball.0, &mut self.ball_v.0, w),
            (&mut self.ball.1, &mut self.ball_v.1, h),
        ] {
            let next = *pos + *vel;
            if next < 0 || next > (max - BALL) as i64 {
                *vel = -*vel;
            }
            *pos += *vel;
        }
    }

    /// Agent centre in pixel coordinates (x, y).
    pub fn agent_centre(&self) -> (f32, f32) {
        (
            self.agent.0 as f32 + AGENT as f32 / 2.0 - 0.5,
            self.agent.1 as f32 + AGENT as f32 / 2.0 - 0.5,
        )
    }

    /// Draw the frame: [3, h, w].
    pub fn render(&self, h: usize, w: usize) -> Vec<f32> {
        let mut img: Vec<f32> = (0..3 * h * w)
            .map(|i| background((i / w) % h, i % w, i / (h * w)))
            .collect();
        let mut square = |(x0, y0): (i64, i64), side: usize, rgb: [f32; 3]| {
            for y in y0 as usize..y0 as usize + side {
                for x in x0 as usize..x0 as usize + side {
                    for (c, v) in rgb.iter().enumerate() {
                        img[(c * h + y) * w + x] = *v;
                    }
                }
            }
        };
        square(self.ball, BALL, BALL_RGB);
        square(self.agent, AGENT, AGENT_RGB);
        img
    }
}

/// Render one clip from its own seed.
pub fn render_clip(cfg: &SynthConfig, index: usize) -> Clip {
    let (h, w) = (cfg.height, cfg.width);
    let mut rng =
        ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let speed = |rng: &mut ChaCha8Rng| {
        if rng.random::<bool>() {
            rng.random_range(1..=2)
        } else {
            -rng.random_range(1..=2)
        }
    };
    let mut state = WorldState {
        agent: (
            rng.random_range(0..=(w - AGENT) as i64),
            rng.random_range(0..=(h - AGENT) as i64),
        ),
        ball: (
            rng.random_range(0..=(w - BALL) as i64),
            rng.random_range(0..=(h - BALL) as i64),
        ),
        ball_v: (speed(&mut rng), speed(&mut rng)),
    };
    let mut action = rng.random_range(0..NUM_ACTIONS as i64);
    let (mut latents, mut actions, mut xy) = (Vec::new(), Vec::new(), Vec::new());
    for f in 0..cfg.frames {
        // Actions persist for a while, like a player holding a key.
        if rng.random::<f64>() < 0.3 {
            action = rng.random_range(0..NUM_ACTIONS as i64);
        }
        if f > 0 {
            state.step(action, h, w);
        }
        latents.extend(state.render(h, w));
        actions.push(action);
        let (cx, cy) = state.agent_centre();
        xy.extend([cx, cy]);
    }
    Clip {
        id: format!("synth-{:06}", index),
        shape: [cfg.frames, 3, h, w],
        latents,
        action_values: cfg
            .continuous_actions
            .then(|| actions.iter().flat_map(|&a| action_vector(a)).collect()),
        actions: (!cfg.continuous_actions).then_some(actions),
        label: None,
        agent_xy: Some(xy),
    }
}

/// Render every clip of the dataset.
pub fn render_clips(cfg: &SynthConfig) -> Vec<Clip> {
    (0..cfg.clips).map(|i| render_clip(cfg, i)).collect()
}

/// Find the agent in a frame [3, h, w]: the centroid of pixels close to the
/// agent's colour, or `None` if no pixel is.
pub fn locate_agent(frame: &[f32], h: usize, w: usize) -> Option<(f32, f32)> {
    let (mut sx, mut sy, mut n) = (0.0f32, 0.0f32, 0.0f32);
    for y in 0..h {
        for x in 0..w {
            let d: f32 = (0..3)
                .map(|c| (frame[(c * h + y) * w + x] - AGENT_RGB[c]).powi(2))
                .sum();
            if d < 0.5 {
                sx += x as f32;
                sy += y as f32;
                n += 1.0;
            }
        }
    }
    (n > 0.0).then(|| (sx / n, sy / n))
}
