//! Does the data fit the model? Checked once when a run starts; each error
//! names the config key to set.
use orrery_data::Dataset;

use crate::config::TrainConfig;
use crate::{Result, TrainError};

/// Check the data against the model config; say which key to set.
pub(crate) fn check_geometry(cfg: &TrainConfig, data: &Dataset) -> Result<()> {
    let [c, h, w] = data.frame_shape();
    let m = &cfg.model;
    if [c, h, w] != [m.channels, m.height, m.width] {
        return Err(TrainError::Config(format!(
            "{} holds latents of [C, H, W] = [{c}, {h}, {w}] but the model expects [{}, {}, {}]: set model.channels={c}, model.height={h}, model.width={w}",
            cfg.data.url, m.channels, m.height, m.width
        )));
    }
    let first = &data.train[0];
    let has_actions = first.actions.is_some();
    let width = first
        .action_values
        .as_ref()
        .map(|a| a.len() / first.shape[0]);
    if m.num_actions > 0 && !has_actions {
        return Err(TrainError::Config(format!(
            "model.num_actions = {} but the clips in {} have no action_ids{}: set model.num_actions = 0{}",
            m.num_actions,
            cfg.data.url,
            if width.is_some() { " (they have continuous actions)" } else { "" },
            width.map(|a| format!(" and model.action_dim = {a}")).unwrap_or_default()
        )));
    }
    if m.action_dim > 0 && width != Some(m.action_dim) {
        return Err(TrainError::Config(match width {
            Some(a) => format!(
                "the clips in {} have continuous actions of width {a} but model.action_dim = {}: set model.action_dim={a}",
                cfg.data.url, m.action_dim
            ),
            None => format!(
                "model.action_dim = {} but the clips in {} have no continuous `actions` column: set model.action_dim = 0{}",
                m.action_dim,
                cfg.data.url,
                if has_actions { " and model.num_actions for their action_ids" } else { "" }
            ),
        }));
    }
    let top_action = data
        .train
        .iter()
        .chain(&data.holdout)
        .flat_map(|c| c.actions.iter().flatten())
        .copied()
        .max();
    if let Some(top) = top_action.filter(|&a| m.num_actions > 0 && a as usize >= m.num_actions) {
        return Err(TrainError::Config(format!(
            "{} holds action id {top} but model.num_actions = {}: set model.num_actions={}",
            cfg.data.url,
            m.num_actions,
            top + 1
        )));
    }
    if has_actions && data.meta.num_actions > m.num_actions {
        return Err(TrainError::Config(format!(
            "{} has {} discrete actions but model.num_actions = {}: set model.num_actions={}",
            cfg.data.url, data.meta.num_actions, m.num_actions, data.meta.num_actions
        )));
    }
    let labelled = data.train[0].label.is_some();
    if m.num_classes > 0 && !labelled {
        return Err(TrainError::Config(format!(
            "model.num_classes = {} but the clips in {} have no label column: set model.num_classes = 0 or add labels",
            m.num_classes, cfg.data.url
        )));
    }
    if m.num_classes > 0 {
        let top = data
            .train
            .iter()
            .chain(&data.holdout)
            .filter_map(|c| c.label)
            .max()
            .unwrap_or(0);
        let classes = data.meta.num_classes.max(top as usize + 1);
        if classes > m.num_classes {
            return Err(TrainError::Config(format!(
                "{} has {classes} classes but model.num_classes = {}: set model.num_classes={classes}",
                cfg.data.url, m.num_classes
            )));
        }
    }
    // World models roll out held-out clips: they need context + 1 frames.
    let need = if m.has_actions() {
        cfg.sample.context + 1
    } else {
        1
    };
    if data.holdout.iter().all(|c| c.shape[0] < m.frames.max(need)) {
        return Err(TrainError::Config(format!(
            "no held-out clip has {} frames (model.frames = {}{}): lower model.frames{}, raise data.holdout_clips, or use longer clips",
            m.frames.max(need),
            m.frames,
            if m.has_actions() { format!(", a rollout needs sample.context + 1 = {need}") } else { String::new() },
            if m.has_actions() { " or sample.context" } else { "" }
        )));
    }
    Ok(())
}
