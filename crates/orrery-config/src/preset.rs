//! `model.preset` in the TOML tree, before it is deserialized: the
//! preset's sizes fill (or, from the command line, replace) the model's.
use crate::{ConfigError, Result};

/// Fill `model.hidden`, `depth`, `heads` (and `patch_size`) from
/// `model.preset`. A preset in the file fills what the file leaves out; a
/// preset given with `--set` (`from_cli`) also replaces the file's values
/// of those keys, but not the ones given with `--set` (`cli_keys`).
pub(crate) fn resolve_preset(
    value: &mut toml::Table,
    from_cli: bool,
    cli_keys: &[String],
) -> Result<()> {
    let Some(toml::Value::Table(model)) = value.get_mut("model") else {
        return Ok(());
    };
    let name = match model.get("preset") {
        None => return Ok(()),
        // The defaults' placeholder, copied along with a [model] table that
        // only `--set model.<key>` made: no preset.
        Some(toml::Value::String(name)) if name.is_empty() => {
            model.remove("preset");
            return Ok(());
        }
        Some(toml::Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(ConfigError(format!(
                "model.preset = {other} must be a string such as \"XL/2\""
            )))
        }
    };
    let p = orrery_model::Preset::named(&name).map_err(|e| ConfigError(e.to_string()))?;
    let mut fill = vec![("hidden", p.hidden), ("depth", p.depth), ("heads", p.heads)];
    fill.extend(p.patch_size.map(|ps| ("patch_size", ps)));
    for (key, v) in fill {
        let v = toml::Value::Integer(v as i64);
        if from_cli && !cli_keys.iter().any(|k| k == &format!("model.{key}")) {
            // `--set model.preset=...` wins over the file's own values (a
            // command-line override is the newest word), not over --set's.
            model.insert(key.into(), v);
        } else {
            model.entry(key).or_insert(v);
        }
    }
    Ok(())
}
