//! The sweep file: parsing and the checks that need no base config.
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::random::Distribution;
use crate::{Result, SweepError};

/// The top-level keys of a sweep file.
const TOP_KEYS: [&str; 8] = [
    "base", "name", "root", "seed", "samples", "set", "grid", "random",
];

/// A sweep file, parsed and checked (but not yet against its base config).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    /// The sweep file, as given.
    pub file: PathBuf,
    /// The base config, relative to the current directory.
    pub base: PathBuf,
    /// The sweep's name (default: the file's stem).
    pub name: String,
    /// Where the run directories go (default: `runs/<name>`).
    pub root: PathBuf,
    /// Seed of the random search.
    pub seed: u64,
    /// Random draws per grid point (with `[random]` keys).
    pub samples: Option<usize>,
    /// Fixed overrides of every run, in file order.
    pub set: Vec<(String, toml::Value)>,
    /// Lists of values whose cartesian product is swept, in file order.
    pub grid: Vec<(String, Vec<toml::Value>)>,
    /// Distributions drawn `samples` times per grid point, in file order.
    pub random: Vec<(String, Distribution)>,
}

/// A TOML table's entries in file order (toml's own Table sorts them).
#[derive(Debug, Default)]
struct Ordered(Vec<(String, toml::Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of config keys")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, toml::Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The three tables in file order (the scalars are read from a Table).
#[derive(Deserialize)]
struct Tables {
    #[serde(default)]
    set: Ordered,
    #[serde(default)]
    grid: Ordered,
    #[serde(default)]
    random: Ordered,
}

impl SweepSpec {
    /// Read and check a sweep file; its base config must exist.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|source| SweepError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let spec = Self::parse(&text, file)?;
        if !spec.base.is_file() {
            return Err(spec.error(
                "base",
                format!(
                    "the base config {} does not exist; `base` is relative to the sweep file's folder",
                    spec.base.display()
                ),
            ));
        }
        Ok(spec)
    }

    /// Parse sweep-file text (`file` names it in messages and anchors
    /// `base`) and check everything that needs no base config.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let toml_err = |e: toml::de::Error| SweepError::Toml {
            file: file.to_path_buf(),
            message: e.message().to_string(),
        };
        let top: toml::Table = toml::from_str(text).map_err(toml_err)?;
        let key_err = |key: &str, message: String| SweepError::Key {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if let Some(k) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
            // A near miss (`sample`, `grids`) shares all but a letter or two.
            let near = TOP_KEYS.iter().find(|t| {
                let common = t.chars().zip(k.chars()).take_while(|(a, b)| a == b).count();
                common >= 3 && t.len().abs_diff(k.len()) <= 2 && common + 2 >= t.len().max(k.len())
            });
            return Err(key_err(
                k,
                format!(
                    "unknown top-level key{}; a sweep file has {} (config keys go in quotes under [set], [grid] or [random])",
                    near.map_or(String::new(), |t| format!(" (did you mean {t}?)")),
                    TOP_KEYS.join(", ")
                ),
            ));
        }
        for table in ["set", "grid", "random"] {
            if top.get(table).is_some_and(|v| !v.is_table()) {
                return Err(key_err(
                    table,
                    format!("must be a table: write [{table}] and its keys below it"),
                ));
            }
        }
        let tables: Tables = toml::from_str(text).map_err(toml_err)?;
        let string = |key: &str| match top.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(key_err(key, format!("must be a string, found {other}"))),
        };
        let count = |key: &str| match top.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(other) => Err(key_err(
                key,
                format!("must be a whole number >= 0, found {other}"),
            )),
        };
        let base = string("base")?.ok_or_else(|| {
            key_err(
                "base",
                "missing: add `base = \"../quickstart.toml\"` (the base config, relative to this file)".into(),
            )
        })?;
        let name = match string("name")? {
            Some(n) => n,
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(key_err(
                "name",
                format!("{name:?} cannot name the sweep's folder: use letters, digits, '-' or '_'"),
            ));
        }
        let dir = file.parent().unwrap_or(Path::new(""));
        let spec = SweepSpec {
            file: file.to_path_buf(),
            base: clean(&dir.join(base)),
            root: match string("root")? {
                Some(r) => PathBuf::from(r),
                None => Path::new("runs").join(&name),
            },
            name,
            seed: count("seed")?.unwrap_or(0),
            samples: count("samples")?.map(|n| n as usize),
            set: tables.set.0,
            grid: vec![],
            random: vec![],
        };
        spec.finish(tables.grid.0, tables.random.0)
    }

    /// Check the keys and values of [set], [grid] and [random].
    fn finish(
        mut self,
        grid: Vec<(String, toml::Value)>,
        random: Vec<(String, toml::Value)>,
    ) -> Result<Self> {
        for (k, _) in &self.set {
            self.check_key("set", k)?;
        }
        for (k, v) in grid {
            self.check_key("grid", &k)?;
            let at = format!("[grid] {k:?}");
            let values = match v {
                toml::Value::Array(a) if a.is_empty() => {
                    return Err(self.error(&at, "the list is empty: give at least one value".into()))
                }
                toml::Value::Array(a) => a,
                other => {
                    return Err(self.error(
                        &at,
                        format!("expected a list of values, e.g. [1e-3, 3e-4], found {other}"),
                    ))
                }
            };
            if let Some(v) = values
                .iter()
                .enumerate()
                .find_map(|(i, v)| values[..i].contains(v).then_some(v))
            {
                return Err(self.error(&at, format!("the list holds {v} twice: drop one")));
            }
            self.grid.push((k, values));
        }
        for (k, v) in random {
            self.check_key("random", &k)?;
            let d =
                Distribution::parse(&v).map_err(|m| self.error(&format!("[random] {k:?}"), m))?;
            self.random.push((k, d));
        }
        for (k, _) in &self.grid {
            if self.random.iter().any(|(r, _)| r == k) {
                return Err(self.error(
                    &format!("[grid] {k:?}"),
                    "is also in [random]: sweep a key in one table".into(),
                ));
            }
        }
        let swept = self.grid.iter().map(|(k, _)| k);
        for k in swept.chain(self.random.iter().map(|(k, _)| k)) {
            if self.set.iter().any(|(s, _)| s == k) {
                return Err(self.error(
                    &format!("[set] {k:?}"),
                    "is also swept in [grid] or [random]: drop it from [set]".into(),
                ));
            }
        }
        if self.grid.is_empty() && self.random.is_empty() {
            return Err(self.error(
                "grid",
                "nothing is swept: give [grid] lists or [random] distributions (fixed overrides alone are one run: use `orrery train --set`)".into(),
            ));
        }
        match (self.samples, self.random.is_empty()) {
            (None, false) => {
                return Err(self.error(
                    "samples",
                    "missing: [random] has keys, so set how many draws to make, e.g. samples = 8"
                        .into(),
                ))
            }
            (Some(_), true) => {
                return Err(self.error(
                    "samples",
                    "is set but [random] has no keys: add [random] keys or drop samples".into(),
                ))
            }
            (Some(0), false) => return Err(self.error("samples", "must be at least 1".into())),
            _ => {}
        }
        Ok(self)
    }

    /// A config key as `orrery train --set` takes it.
    fn check_key(&self, table: &str, key: &str) -> Result<()> {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.len() < 2 {
            return Err(self.error(
                &format!("[{table}] {key:?}"),
                "is not a dotted config key: write it in quotes, whole, as `\"run.steps\" = ...` (an unquoted run.steps makes a table)".into(),
            ));
        }
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !parts.iter().all(ok) {
            return Err(self.error(
                &format!("[{table}] {key:?}"),
                "a config key is dotted words of letters, digits and '_', e.g. \"optim.lr\"".into(),
            ));
        }
        Ok(())
    }

    /// A [`SweepError::Key`] of this file.
    pub(crate) fn error(&self, key: &str, message: String) -> SweepError {
        SweepError::Key {
            file: self.file.clone(),
            key: key.to_string(),
            message,
        }
    }
}

/// `a/b/../c` as `a/c` (only where `..` follows a plain folder name).
fn clean(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match (c, out.last()) {
            (Component::CurDir, _) if !out.is_empty() => {}
            (Component::ParentDir, Some(Component::Normal(_))) => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
