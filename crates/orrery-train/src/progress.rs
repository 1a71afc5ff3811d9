//! Terminal progress bars for long loops (training steps, sampling).
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with ETA on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, pos: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta}  {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}
