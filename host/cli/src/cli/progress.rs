//! Progress bars on stderr for what takes a while (`bench transfer`, `resume` of many runs),
//! drawn only when stderr is a terminal: never into a log, a pipe or `--json` output.

use std::sync::Arc;

/// A progress bar of `total` `unit`s on stderr, drawn only when stderr is a terminal (so
/// never into a log or a pipe); it clears itself when dropped.
pub(crate) fn bar(total: u64, unit: &str) -> Arc<ClearedBar> {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    let style = indicatif::ProgressStyle::with_template(&format!(
        "  [{{bar:40}}] {{pos}}/{{len}} {unit}  {{elapsed}}"
    ))
    .expect("a fixed template")
    .progress_chars("#>.");
    bar.set_style(style);
    Arc::new(ClearedBar(bar))
}

/// A progress bar that clears itself when dropped.
pub(crate) struct ClearedBar(indicatif::ProgressBar);

impl ClearedBar {
    pub(crate) fn set_position(&self, done: u64) {
        self.0.set_position(done);
    }
}

impl Drop for ClearedBar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
