//! The binary's allocator: [`CountingAlloc`] is mimalloc (whose per-thread
//! heaps keep freed pages for reuse, where glibc's malloc handed the decode
//! threads' large buffers back to the OS and faulted them in again) plus,
//! for benchmarks' heap figures, live and peak bytes of allocations of 4 KiB
//! or more (tensor buffers; small ones are left out so counting costs
//! nothing measurable). A binary opts in by installing it as its global allocator;
//! without it every count reads 0.
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Allocations smaller than this are not counted.
const MIN: usize = 4096;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// mimalloc with live and peak byte counts.
pub struct CountingAlloc;

fn grow(n: usize) {
    if n >= MIN {
        let now = LIVE.fetch_add(n, Relaxed) + n;
        PEAK.fetch_max(now, Relaxed);
    }
}

fn shrink(n: usize) {
    if n >= MIN {
        LIVE.fetch_sub(n, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to mimalloc; the counters only
// observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        p
    }
}

// mimalloc's C API (linked through the `mimalloc` crate; its Rust
// declarations of the options need a feature that names only v2's).
extern "C" {
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (include/mimalloc.h):
/// how many milliseconds freed memory waits before it is given back to the
/// OS; -1 never.
const PURGE_DELAY: std::ffi::c_int = 15;

/// Keep freed pages for reuse instead of giving them back to the OS a
/// second after they are freed (mimalloc v3's default, src/options.c). A training step frees and
/// again allocates the same tensor-sized buffers; given back, each comes
/// back as fresh pages the kernel must zero, which was 16% of a CPU step
/// (`clear_page_erms` in perf) on the 4.17M-parameter video DiT. Resident
/// memory then stays at the step's peak, as it does under PyTorch's caching
/// allocator. Call it first thing in `main`.
pub fn keep_freed_pages() {
    // SAFETY: sets one integer option; mimalloc reads options atomically.
    unsafe { mi_option_set(PURGE_DELAY, -1) };
}

/// mimalloc's purge delay in milliseconds (-1: never).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads one integer option.
    unsafe { mi_option_get(PURGE_DELAY) as i64 }
}

/// Bytes live now (0 when the allocator is not installed).
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Start a new peak at the live bytes; returns them.
pub fn reset_peak() -> usize {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

/// The most bytes live since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: CountingAlloc = CountingAlloc;

#[cfg(test)]
mod tests {
    use super::*;

    /// The option's index is mimalloc v3's: it reads v3's default of 1000 ms
    /// (src/options.c), and setting it reads back.
    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        assert_eq!(purge_delay_ms(), 1000, "not mimalloc v3's purge_delay");
        keep_freed_pages();
        assert_eq!(purge_delay_ms(), -1);
    }

    #[test]
    fn a_large_buffer_shows_in_live_and_peak_and_a_small_one_does_not() {
        // Other tests allocate in parallel, so compare with slack.
        let before = reset_peak();
        let big = vec![1u8; 64 << 20];
        assert!(
            live() >= before + (64 << 20) - (16 << 20),
            "{} {before}",
            live()
        );
        drop(big);
        assert!(peak() >= before + (64 << 20), "{} {before}", peak());
        let small: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 100]).collect();
        assert_eq!(small.len(), 1000);
    }
}
