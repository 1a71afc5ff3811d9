//! `--set a.b=c` overrides and serde errors that name the key and suggest one.
use crate::{ConfigError, Result};

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
        ConfigError(format!(
            "--set {spec:?} is not of the form key=value (e.g. --set optim.lr=3e-4)"
        ))
    })?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (mut node, mut def) = (value, Some(defaults));
    for (i, part) in parts.iter().enumerate() {
        let path = parts[..=i].join(".");
        let in_defaults = def.and_then(|d| d.get(*part));
        let in_file = node.contains_key(*part);
        // A tagged table's variant has fields the defaults do not show
        // (`objective.weighting.gamma` of min_snr): deserializing checks them.
        let variant_field = i + 1 == parts.len() && node.contains_key("kind");
        if in_defaults.is_none() && !in_file && !variant_field {
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
            return Err(ConfigError(format!(
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
                return Err(ConfigError(format!(
                    "--set {key}: {path} is a value, not a table"
                )))
            }
        };
    }
    Ok(())
}

/// Where the config's values came from, for messages: the file's name and
/// text (for line numbers) and the `--set` overrides applied to it.
pub struct Origin<'a> {
    /// The file's name as the user gave it.
    pub name: &'a str,
    /// The file's text.
    pub text: &'a str,
    /// The `--set key=value` overrides, in order.
    pub overrides: &'a [String],
}

impl Origin<'_> {
    /// Who set `path` (a dotted key): the last `--set` of it or of a table
    /// above it, else the file, with the key's line when it can be found.
    fn blame(&self, path: &str) -> String {
        let set = self.overrides.iter().rev().find(|o| {
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
            path == key || path.starts_with(&format!("{key}."))
        });
        if let Some(o) = set {
            return format!("--set {o}");
        }
        match line_of(self.text, path) {
            Some(line) => format!("{} line {line}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// The 1-based line of a dotted key in TOML text: `key = ` under its
/// `[table]` header, a dotted `table.key = `, or an inline table on the
/// line of one of the key's parents. None when it is not found (a key
/// from a default, say).
pub(crate) fn line_of(text: &str, path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut table: Vec<String> = Vec::new();
    let mut parent_line = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let h = h.trim_matches(|c| c == '[' || c == ']');
            table = h
                .split('.')
                .map(|p| p.trim().trim_matches('"').to_string())
                .collect();
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let full: Vec<String> = table
            .iter()
            .cloned()
            .chain(
                key.trim()
                    .split('.')
                    .map(|p| p.trim().trim_matches('"').to_string()),
            )
            .collect();
        if full.len() > parts.len() || full.iter().zip(&parts).any(|(a, b)| a != b) {
            continue;
        }
        if full.len() == parts.len() {
            return Some(n + 1);
        }
        // An inline table holding the key, e.g. `weighting = { kind = ... }`.
        parent_line = Some(n + 1);
    }
    parent_line
}

/// Let a tagged table be written by its variant's name alone:
/// `weighting = "none"` (or `--set objective.weighting=none`) is
/// `weighting = { kind = "none" }`. Applies wherever the defaults hold a
/// table with a `kind` key.
pub fn bare_variants(value: &mut toml::Table, defaults: &toml::Table) {
    for (key, def) in defaults {
        let Some(def) = def.as_table() else { continue };
        match value.get_mut(key) {
            Some(toml::Value::String(name)) if def.contains_key("kind") => {
                let mut t = toml::Table::new();
                t.insert("kind".into(), toml::Value::String(name.clone()));
                value.insert(key.clone(), toml::Value::Table(t));
            }
            Some(toml::Value::Table(inner)) => bare_variants(inner, def),
            _ => {}
        }
    }
}

/// The names serde lists after "expected one of" (or "expected"), in order.
fn expected_names(msg: &str) -> Vec<&str> {
    let Some(i) = msg.find("expected") else {
        return Vec::new();
    };
    let list = &msg[i..];
    // toml may add " for key `...`" or a line "in `...`" after the list:
    // stop before it.
    let list = list.split(" for key").next().unwrap_or(list);
    let list = list.split('\n').next().unwrap_or(list);
    list.split('`').skip(1).step_by(2).collect()
}

/// Deserialize with the failing key's path and who set it in the message,
/// and a suggestion for unknown keys.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    value: toml::Table,
    origin: &Origin,
) -> Result<T> {
    let de = toml::Value::Table(value);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // toml ends its messages with a line naming the table ("in `model`"):
        // the path says that already.
        let inner = inner.split("\nin `").next().unwrap_or(&inner).trim();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("");
            let expected = expected_names(rest.split_once('`').map_or("", |(_, r)| r));
            // For a struct the path ends at the unknown field; inside a
            // tagged table it ends at the table.
            let full = if path.rsplit('.').next() == Some(field) {
                path.clone()
            } else if path.is_empty() || path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            let parent = full
                .rsplit_once('.')
                .map(|(p, _)| format!("{p}."))
                .unwrap_or_default();
            let hint = suggest(field, expected.iter().copied())
                .map(|s| format!("; did you mean {parent}{s}?"))
                .unwrap_or_default();
            return ConfigError(format!(
                "{}: unknown config key {full}{hint} (valid keys here: {})",
                origin.blame(&full),
                expected.join(", ")
            ));
        }
        ConfigError(format!(
            "{}: bad value for {path}: {inner}",
            origin.blame(&path)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_on_their_lines() {
        let text = "[run]\nname = \"x\"\n\n[model]\n# c\nhidden = \"big\"\n[objective]\nweighting = { kind = \"min_snr\", gama = 5 }\n";
        assert_eq!(line_of(text, "model.hidden"), Some(6));
        assert_eq!(line_of(text, "run.name"), Some(2));
        assert_eq!(line_of(text, "objective.weighting.gama"), Some(8));
        assert_eq!(line_of(text, "model.depth"), None);
        assert_eq!(line_of("model.hidden = 3\n", "model.hidden"), Some(1));
    }

    #[test]
    fn expected_lists_stop_before_the_key_note() {
        let msg = "expected one of `a`, `b_c` for key `model`";
        assert_eq!(expected_names(msg), vec!["a", "b_c"]);
        let msg = "expected one of `a`, `b_c`\nin `model`";
        assert_eq!(expected_names(msg), vec!["a", "b_c"]);
    }
}
