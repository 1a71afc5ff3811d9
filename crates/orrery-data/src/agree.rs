//! The checks a whole dataset must pass, beyond each row's own: clip ids
//! are unique, and every clip has the same [C, H, W], the same kind of
//! actions and labels (or none). Training ([`crate::Dataset::open`]) and
//! `orrery data inspect` both apply them, from a small summary per clip.
use crate::{Clip, DataError, Result};

/// What the checks need of one clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Clip id.
    pub id: String,
    /// [T, C, H, W].
    pub shape: [usize; 4],
    /// Has discrete action ids.
    pub actions: bool,
    /// Width of its continuous actions per frame, if any.
    pub action_width: Option<usize>,
    /// Has a class label.
    pub label: bool,
}

impl Summary {
    /// The summary of a decoded clip.
    pub fn of(c: &Clip) -> Self {
        Summary {
            id: c.id.clone(),
            shape: c.shape,
            actions: c.actions.is_some(),
            action_width: c
                .action_values
                .as_ref()
                .map(|a| a.len() / c.shape[0].max(1)),
            label: c.label.is_some(),
        }
    }
}

/// Check that the clips of `url` agree (sorts `clips` by id).
pub fn check(clips: &mut [Summary], url: &str) -> Result<()> {
    clips.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = clips.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(DataError::Geometry(format!(
            "clip id {} appears twice under {url}",
            w[0].id
        )));
    }
    let Some(first) = clips.first() else {
        return Ok(());
    };
    if let Some(c) = clips.iter().find(|c| c.shape[1..] != first.shape[1..]) {
        return Err(DataError::Geometry(format!(
            "clip {} has latent shape {:?} but clip {} has {:?}: all clips need the same [C, H, W]",
            c.id, c.shape, first.id, first.shape
        )));
    }
    if let Some(c) = clips
        .iter()
        .find(|c| c.actions != first.actions || c.action_width != first.action_width)
    {
        return Err(DataError::Geometry(format!(
            "clip {} and clip {} disagree on actions (ids: {} vs {}, continuous width: {:?} vs {:?}): all clips of {url} need the same kind",
            first.id, c.id, first.actions, c.actions, first.action_width, c.action_width
        )));
    }
    if let Some(c) = clips.iter().find(|c| c.label != first.label) {
        let (with, without) = if c.label { (c, first) } else { (first, c) };
        return Err(DataError::Geometry(format!(
            "clip {} has a label but clip {} has none: label every clip of {url} or none",
            with.id, without.id
        )));
    }
    Ok(())
}
