//! Where cubecl keeps the GPU kernels it compiles, so that a restarted or
//! requeued run, a second rank on the node, or `orrery sample` after
//! `orrery train` does not compile them again (the first CUDA step of the
//! quickstart compiles a few hundred fused kernels: minutes).
//!
//! cubecl caches compiled kernels (PTX) only when its config names a place,
//! and its default names none; it keeps autotune results under the nearest
//! cargo project's `target/` (else `~/.cache/cubecl`). orrery puts both in
//! one directory per GPU architecture (`sm_90`, ...: cubecl's cache keys
//! do not name it, and a cache may be shared by nodes with different GPUs)
//! under `ORRERY_KERNEL_CACHE` if set (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/orrery/kernels`, else `~/.cache/orrery/kernels`. A
//! `cubecl.toml`, or a `burn.toml` with a `[cubecl]` section, in the working
//! directory or above wins: then cubecl's own settings apply. A directory
//! that cannot be written leaves the cache off, with a warning. The caches
//! are cubecl's own: keyed by kernel and cubecl version, append-only and
//! locked for many processes. `ORRERY_KERNEL_LOG=FILE` makes cubecl write
//! a line to FILE for each kernel it compiles and each autotune choice.

use std::path::PathBuf;

/// The kernel cache directory for this environment (`var` reads a variable),
/// or None when the user turned it off or no home directory is known.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("ORRERY_KERNEL_CACHE") {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|base| base.join("orrery").join("kernels"))
}

/// Whether a cubecl config file is in `dir` or above (cubecl reads the
/// first it finds; a `burn.toml` counts when it has a `[cubecl]` section).
pub fn config_file_above(dir: &std::path::Path) -> bool {
    dir.ancestors().any(|d| {
        ["cubecl.toml", "CubeCL.toml"]
            .iter()
            .any(|f| d.join(f).is_file())
            || ["burn.toml", "Burn.toml"]
                .iter()
                .any(|f| std::fs::read_to_string(d.join(f)).is_ok_and(|t| t.contains("[cubecl")))
    })
}

/// Whether files can be created in `dir` (made if missing).
pub fn writable(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::create_dir_all(dir).is_ok() && std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// The compute capability of GPU `ordinal` as cubecl compiles for it
/// (`sm_90`), if the driver answers.
#[cfg(feature = "cuda")]
pub fn gpu_arch(ordinal: usize) -> Option<String> {
    use cudarc::driver::{result, sys};
    // SAFETY: only checks whether libcuda loads (cudarc panics on use otherwise).
    if !unsafe { sys::is_culib_present() } || result::init().is_err() {
        return None;
    }
    let dev = result::device::get(ordinal as i32).ok()?;
    let attr = |a| unsafe { result::device::get_attribute(dev, a) }.ok();
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Some(format!("sm_{major}{minor}"))
}

/// Point cubecl's kernel and autotune caches at [`cache_dir`]'s folder for
/// GPU architecture `arch` (CUDA; None: no cache, as for WebGPU), and its
/// compile and autotune logs at `ORRERY_KERNEL_LOG` if set (a line per
/// kernel compiled and per autotune choice: what a first step spends its
/// minutes on), unless a cubecl config file is in charge; call before the
/// first GPU device is made (later calls do nothing, as does a call after
/// cubecl has read its config).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn install(arch: Option<String>) {
    use cubecl::config::{
        autotune::AutotuneLogLevel, cache::CacheConfig, compilation::CompilationLogLevel,
        CubeClRuntimeConfig, RuntimeConfig,
    };
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cwd = std::env::current_dir().unwrap_or_default();
        if config_file_above(&cwd) {
            return;
        }
        let cache = cache_dir(|k| std::env::var(k).ok())
            .zip(arch)
            .map(|(root, arch)| root.join(arch))
            .filter(|dir| {
                let ok = writable(dir);
                if !ok {
                    eprintln!(
                        "warning: cannot write the kernel cache {}: GPU kernels will be compiled again by every process (set ORRERY_KERNEL_CACHE to a writable directory, or to off)",
                        dir.display()
                    );
                }
                ok
            });
        let log = log_file(|k| std::env::var(k).ok());
        if cache.is_none() && log.is_none() {
            return;
        }
        let mut state = CubeClRuntimeConfig::storage().lock();
        if state.is_some() {
            return;
        }
        let mut config = CubeClRuntimeConfig::default();
        if let Some(dir) = cache {
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            config.autotune.cache = CacheConfig::File(dir);
        }
        if let Some(file) = log {
            config.compilation.logger.level = CompilationLogLevel::Basic;
            config.compilation.logger.file = Some(file.clone());
            config.autotune.logger.level = AutotuneLogLevel::Minimal;
            config.autotune.logger.file = Some(file);
        }
        *state = Some(std::sync::Arc::new(config.override_from_env()));
    });
}

/// Where cubecl should log the kernels it compiles and its autotune
/// choices: `ORRERY_KERNEL_LOG`, if set and not empty.
pub fn log_file(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    var("ORRERY_KERNEL_LOG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::cache_dir;
    use std::path::PathBuf;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_kernel_cache_goes_where_the_user_says_else_under_the_cache_home() {
        let home = [("HOME", "/h")];
        assert_eq!(
            cache_dir(env(&home)),
            Some(PathBuf::from("/h/.cache/orrery/kernels"))
        );
        let xdg = [("HOME", "/h"), ("XDG_CACHE_HOME", "/x")];
        assert_eq!(
            cache_dir(env(&xdg)),
            Some(PathBuf::from("/x/orrery/kernels"))
        );
        let own = [("HOME", "/h"), ("ORRERY_KERNEL_CACHE", "/k")];
        assert_eq!(cache_dir(env(&own)), Some(PathBuf::from("/k")));
        let off = [("HOME", "/h"), ("ORRERY_KERNEL_CACHE", "off")];
        assert_eq!(cache_dir(env(&off)), None);
        // An empty variable counts as unset.
        let empty = [
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", ""),
            ("ORRERY_KERNEL_CACHE", ""),
        ];
        assert_eq!(
            cache_dir(env(&empty)),
            Some(PathBuf::from("/h/.cache/orrery/kernels"))
        );
        assert_eq!(cache_dir(env(&[])), None);
        assert_eq!(super::log_file(env(&empty)), None);
        let log = [("ORRERY_KERNEL_LOG", "/tmp/k.log")];
        assert_eq!(
            super::log_file(env(&log)),
            Some(PathBuf::from("/tmp/k.log"))
        );
    }

    #[test]
    fn a_cubecl_config_file_in_a_parent_directory_is_found() {
        let root = std::env::temp_dir().join(format!("orrery-kernels-{}", std::process::id()));
        let deep = root.join("a").join("b");
        std::fs::create_dir_all(&deep).unwrap();
        // Without one, only what is above the temporary directory counts.
        let outside = super::config_file_above(&std::env::temp_dir());
        std::fs::write(root.join("cubecl.toml"), "").unwrap();
        assert!(super::config_file_above(&deep));
        std::fs::remove_file(root.join("cubecl.toml")).unwrap();
        assert_eq!(super::config_file_above(&deep), outside);
        // A burn.toml counts only with a [cubecl] section.
        std::fs::write(root.join("burn.toml"), "[other]\n").unwrap();
        assert_eq!(super::config_file_above(&deep), outside);
        std::fs::write(root.join("burn.toml"), "[cubecl.compilation]\n").unwrap();
        assert!(super::config_file_above(&deep));
        assert!(super::writable(&deep.join("new")));
        std::fs::write(root.join("file"), "").unwrap();
        assert!(!super::writable(&root.join("file").join("below")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
