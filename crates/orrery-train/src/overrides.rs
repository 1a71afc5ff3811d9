//! `--set a.b=c` overrides and serde errors that name the key and suggest one.
use crate::{Result, TrainError};

fn suggest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(key, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

fn parse_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("v"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Apply one `key=value` to `value`. The key must exist in the config tree
/// (`defaults`, or the file itself for keys of non-default variants).
pub fn apply(value: &mut toml::Table, defaults: &toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec.split_once('=').ok_or_else(|| {
        TrainError::Config(format!(
            "--set {spec:?} is not of the form key=value (e.g. --set optim.lr=3e-4)"
        ))
    })?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (mut node, mut def) = (value, Some(defaults));
    for (i, part) in parts.iter().enumerate() {
        let path = parts[..=i].join(".");
        let in_defaults = def.and_then(|d| d.get(*part));
        let in_file = node.contains_key(*part);
        if in_defaults.is_none() && !in_file {
            let mut keys: Vec<&str> = def
                .map(|d| d.keys().map(String::as_str).collect())
                .unwrap_or_default();
            keys.extend(node.keys().map(String::as_str));
            let hint = suggest(part, keys.iter().copied())
                .map(|s| {
                    format!(
                        "; did you mean {}?",
                        parts[..i]
                            .iter()
                            .copied()
                            .chain([s.as_str()])
                            .collect::<Vec<_>>()
                            .join(".")
                    )
                })
                .unwrap_or_default();
            return Err(TrainError::Config(format!(
                "--set {key}: there is no config key {path}{hint}"
            )));
        }
        if i + 1 == parts.len() {
            if *part == "kind" {
                // Switching a tagged variant: start its table afresh.
                node.clear();
            }
            node.insert(part.to_string(), parse_value(raw.trim()));
            return Ok(());
        }
        if !in_file {
            let copy = in_defaults
                .cloned()
                .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
            node.insert(part.to_string(), copy);
        }
        def = in_defaults.and_then(|d| d.as_table());
        node = match node.get_mut(*part) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(TrainError::Config(format!(
                    "--set {key}: {path} is a value, not a table"
                )))
            }
        };
    }
    Ok(())
}

/// Deserialize with the failing key's path in the message, and a suggestion
/// for unknown keys.
pub fn deserialize<T: serde::de::DeserializeOwned>(value: toml::Table, origin: &str) -> Result<T> {
    let de = toml::Value::Table(value);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let inner = inner.trim();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("");
            let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
            let full = path.clone();
            let parent = full
                .rsplit_once('.')
                .map(|(p, _)| format!("{p}."))
                .unwrap_or_default();
            let hint = suggest(field, expected.iter().copied())
                .map(|s| format!("; did you mean {parent}{s}?"))
                .unwrap_or_default();
            return TrainError::Config(format!(
                "{origin}: unknown config key {full}{hint} (valid keys here: {})",
                expected.join(", ")
            ));
        }
        TrainError::Config(format!("{origin}: bad value for {path}: {inner}"))
    })
}
