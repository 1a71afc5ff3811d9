//! The run directory's JSON-lines logs (metrics.jsonl, samples.jsonl): a
//! run keeps the lines of the steps before its start and appends after them.
use std::path::Path;

use crate::io;
use crate::Result;

/// Keep only the JSON lines of `path` whose `"step"` passes `keep`, and open
/// it for appending (created if missing).
pub(crate) fn keep_lines(path: &Path, keep: impl Fn(u64) -> bool) -> Result<std::fs::File> {
    let kept: String = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(&keep)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(io(path))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::keep_lines;
    use std::io::Write;

    /// A run keeps the log lines of the steps before its start and appends
    /// after them; lines of later steps (or unreadable ones) go.
    #[test]
    fn log_lines_after_the_start_step_are_dropped() {
        let path = std::env::temp_dir().join(format!("orrery-keep-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            "{\"step\":1}\n{\"step\":2}\nnot json\n{\"step\":3}\n",
        )
        .unwrap();
        let mut f = keep_lines(&path, |s| s <= 2).unwrap();
        writeln!(f, "{{\"step\":3,\"new\":true}}").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3,\"new\":true}\n"
        );
        // A fresh start (step 0) empties it; a missing file is created.
        drop(keep_lines(&path, |s| s <= 0).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_file(&path).unwrap();
        drop(keep_lines(&path, |_| true).unwrap());
        assert!(path.is_file());
        std::fs::remove_file(&path).unwrap();
    }
}
