//! Output files the user names (`--out`, `--cache`): checked before any work
//! is done. Anything that is not a regular file (a device such as /dev/null,
//! a directory, a FIFO) is refused, since the writers replace the path by
//! renaming a finished temporary file over it; missing parent folders are
//! created; and a folder that cannot be written is found at once, not after
//! a long rollout.
use std::path::Path;

use crate::{Result, TrainError};

/// What a file-system object is, in words.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Check that `path` (named `flag` in messages, e.g. "--out") can be written
/// as a regular file: it is missing or a regular file, its parent folders
/// exist (created if missing) and can be written.
pub fn output_file(path: &Path, flag: &str) -> Result<()> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(m) => {
            return Err(TrainError::Config(format!(
                "{flag} {shown} exists and is {}, not a regular file: name a new file (or an existing regular one) to write",
                kind(&m)
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TrainError::Io(format!("{flag} {shown}: {e}"))),
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| {
        TrainError::Io(format!(
            "{flag} {shown}: cannot create its folder {}: {e}",
            parent.display()
        ))
    })?;
    // Writable? Create and remove a probe file beside it.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let probe = parent.join(format!(".{name}.probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            TrainError::Io(format!(
                "{flag} {shown}: cannot write in {}: {e}",
                parent.display()
            ))
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_directories_are_refused_and_parents_made() {
        let err = output_file(Path::new("/dev/null"), "--out")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a character device, not a regular file"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("orrery-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let err = output_file(&std::env::temp_dir(), "--out")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        let nested = dir.join("a/b/m.safetensors");
        output_file(&nested, "--out").unwrap();
        assert!(dir.join("a/b").is_dir());
        assert_eq!(
            std::fs::read_dir(dir.join("a/b")).unwrap().count(),
            0,
            "the probe is removed"
        );
        std::fs::write(&nested, b"x").unwrap();
        output_file(&nested, "--out").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
