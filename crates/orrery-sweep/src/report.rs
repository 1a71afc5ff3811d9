//! A table of runs' results from their `metrics.jsonl` (and `rollout.json`),
//! sorted by a column, as Markdown or CSV.
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::plan::compact_number;
use crate::{Result, SweepError};

/// The metric columns, after the run and its swept values.
const METRICS: [&str; 7] = [
    "step",
    "loss",
    "heldout_loss",
    "heldout_loss_ema",
    "context_gain",
    "action_gain",
    "samples_per_s",
];

/// One run to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportInput {
    /// The run's name in the table.
    pub name: String,
    /// Its run directory.
    pub dir: PathBuf,
    /// Its swept values by column label (empty for a lone run directory).
    pub swept: Vec<(String, String)>,
    /// A remark for the note column (e.g. "at step 40 of 100").
    pub note: Option<String>,
}

/// A table cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Not measured.
    Empty,
    /// A number.
    Num(f64),
    /// Text (a run name, a swept value, a note).
    Text(String),
}

impl Cell {
    /// The cell as a number, where it is one (swept values are text).
    fn number(&self) -> Option<f64> {
        match self {
            Cell::Num(x) => Some(*x),
            Cell::Text(t) => t.parse().ok(),
            Cell::Empty => None,
        }
    }
}

/// Runs' results: one row per run, in the order of `columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `run`, the swept labels, the metrics, rollout.json's numbers, `note`.
    pub columns: Vec<String>,
    /// One row per run.
    pub rows: Vec<Vec<Cell>>,
}

/// What a run's metrics.jsonl says.
#[derive(Default)]
struct Summary {
    step: Option<f64>,
    last: [Option<f64>; 5],
    rate: (f64, usize),
    bad_lines: usize,
}

/// Read `<dir>/metrics.jsonl`; None when there is none.
fn summarize(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
    let mut s = Summary::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_str(line) else {
            s.bad_lines += 1;
            continue;
        };
        let num = |k: &str| m.get(k).and_then(serde_json::Value::as_f64);
        if let Some(step) = num("step") {
            s.step = Some(s.step.map_or(step, |a: f64| a.max(step)));
        }
        for (slot, key) in s.last.iter_mut().zip(&METRICS[1..6]) {
            if let Some(v) = num(key) {
                *slot = Some(v);
            }
        }
        if let Some(r) = num("samples_per_s") {
            s.rate = (s.rate.0 + r, s.rate.1 + 1);
        }
    }
    Some(s)
}

/// `<dir>/rollout.json`'s numeric top-level fields, in name order.
fn rollout(dir: &Path) -> std::result::Result<Vec<(String, f64)>, String> {
    let path = dir.join("rollout.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(vec![]);
    };
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
            .collect()),
        _ => Err("rollout.json is not a JSON object".into()),
    }
}

impl Report {
    /// Read each run's records. A run without metrics.jsonl is a row of
    /// blanks with a note; a path that exists but is not a directory is an
    /// error.
    pub fn collect(inputs: &[ReportInput]) -> Result<Report> {
        let mut swept: Vec<String> = Vec::new();
        let mut extra: Vec<String> = Vec::new();
        let mut found = Vec::new();
        for input in inputs {
            if input.dir.exists() && !input.dir.is_dir() {
                return Err(SweepError::Report {
                    path: input.dir.clone(),
                    message: "is not a run directory: give run directories (or one sweep file)"
                        .into(),
                });
            }
            for (label, _) in &input.swept {
                if !swept.contains(label) {
                    swept.push(label.clone());
                }
            }
            let mut notes: Vec<String> = input.note.iter().cloned().collect();
            let summary = summarize(&input.dir);
            match &summary {
                None if input.dir.is_dir() => notes.push("no metrics.jsonl".into()),
                None if input.note.is_none() => notes.push("no run directory".into()),
                None => {}
                Some(s) if s.bad_lines > 0 => notes.push(format!(
                    "{} unreadable line(s) in metrics.jsonl",
                    s.bad_lines
                )),
                Some(_) => {}
            }
            let numbers = rollout(&input.dir).unwrap_or_else(|e| {
                notes.push(e);
                vec![]
            });
            for (k, _) in &numbers {
                if !extra.contains(k) {
                    extra.push(k.clone());
                }
            }
            found.push((summary, numbers, notes));
        }
        let columns: Vec<String> = std::iter::once("run".to_string())
            .chain(swept.iter().cloned())
            .chain(METRICS.iter().map(|m| m.to_string()))
            .chain(extra.iter().map(|k| {
                let clash =
                    k == "run" || k == "note" || swept.contains(k) || METRICS.contains(&k.as_str());
                if clash {
                    format!("rollout.{k}")
                } else {
                    k.clone()
                }
            }))
            .chain(["note".to_string()])
            .collect();
        let rows = inputs
            .iter()
            .zip(found)
            .map(|(input, (summary, numbers, notes))| {
                let opt = |v: Option<f64>| v.map_or(Cell::Empty, Cell::Num);
                let mut row = vec![Cell::Text(input.name.clone())];
                row.extend(swept.iter().map(|label| {
                    input
                        .swept
                        .iter()
                        .find(|(l, _)| l == label)
                        .map_or(Cell::Empty, |(_, v)| Cell::Text(v.clone()))
                }));
                let s = summary.unwrap_or_default();
                row.push(opt(s.step));
                row.extend(s.last.iter().map(|v| opt(*v)));
                row.push(opt((s.rate.1 > 0).then(|| s.rate.0 / s.rate.1 as f64)));
                row.extend(
                    extra
                        .iter()
                        .map(|k| opt(numbers.iter().find(|(n, _)| n == k).map(|(_, v)| *v))),
                );
                row.push(if notes.is_empty() {
                    Cell::Empty
                } else {
                    Cell::Text(notes.join("; "))
                });
                row
            })
            .collect();
        Ok(Report { columns, rows })
    }

    /// Sort the rows by `column`, ascending, numbers by value, blanks last.
    pub fn sort_by(&mut self, column: &str) -> Result<()> {
        let Some(i) = self.columns.iter().position(|c| c == column) else {
            return Err(SweepError::UnknownColumn {
                column: column.to_string(),
                valid: self.columns.join(", "),
            });
        };
        self.rows.sort_by(|a, b| match (&a[i], &b[i]) {
            (Cell::Empty, Cell::Empty) => Ordering::Equal,
            (Cell::Empty, _) => Ordering::Greater,
            (_, Cell::Empty) => Ordering::Less,
            (x, y) => match (x.number(), y.number()) {
                (Some(p), Some(q)) => p.total_cmp(&q),
                _ => text(x, false).cmp(&text(y, false)),
            },
        });
        Ok(())
    }

    /// A Markdown table, columns padded to one width, numbers right-aligned.
    pub fn to_markdown(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| text(c, false).replace('|', "\\|"))
                    .collect()
            })
            .collect();
        let numeric: Vec<bool> = (0..self.columns.len())
            .map(|i| {
                let text = ["run", "note"].contains(&self.columns[i].as_str());
                let mut filled = self
                    .rows
                    .iter()
                    .map(|r| &r[i])
                    .filter(|c| **c != Cell::Empty);
                !text && filled.all(|c| c.number().is_some())
            })
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .fold(c.len().max(3), usize::max)
            })
            .collect();
        let line = |items: Vec<String>| format!("| {} |\n", items.join(" | "));
        let pad = |s: &str, i: usize| {
            let fill = " ".repeat(widths[i] - s.chars().count());
            if numeric[i] {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        let mut out = line(
            self.columns
                .iter()
                .enumerate()
                .map(|(i, c)| pad(c, i))
                .collect(),
        );
        out += &line(
            (0..self.columns.len())
                .map(|i| {
                    let dashes = "-".repeat(widths[i] - 1);
                    if numeric[i] {
                        format!("{dashes}:")
                    } else {
                        format!("{dashes}-")
                    }
                })
                .collect(),
        );
        for row in &cells {
            out += &line(row.iter().enumerate().map(|(i, c)| pad(c, i)).collect());
        }
        out
    }

    /// CSV (RFC 4180): a header line, one line per run, numbers in full.
    pub fn to_csv(&self) -> String {
        let line = |items: Vec<String>| items.join(",") + "\n";
        let mut out = line(self.columns.iter().map(|c| csv_field(c)).collect());
        for row in &self.rows {
            out += &line(row.iter().map(|c| csv_field(&text(c, true))).collect());
        }
        out
    }
}

/// A cell as text: numbers with 4 significant digits, or in full.
fn text(cell: &Cell, full: bool) -> String {
    match cell {
        Cell::Empty => String::new(),
        Cell::Num(x) if full => format!("{x}"),
        Cell::Num(x) => compact_number(*x),
        Cell::Text(t) => t.clone(),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break
/// (quotes doubled), or starts or ends with a space.
fn csv_field(s: &str) -> String {
    let quote = s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if quote {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
