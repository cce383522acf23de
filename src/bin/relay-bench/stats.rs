//! Latency percentiles (an HDR histogram in microseconds, 3 significant
//! digits) and the progress line on stderr.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

/// Largest latency recorded exactly: one hour, in microseconds; longer ones
/// are recorded as one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// A latency distribution.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        // Cannot fail: the bounds are constants that satisfy
        // 1 <= low, 2 * low <= high and sigfig <= 5.
        Latency(Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds"))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Cannot fail: both histograms have the same bounds, so every value
        // of `other` fits.
        self.0
            .add(&other.0)
            .expect("histograms with equal bounds add");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.mean() / 1000.0
    }

    /// `{"count", "p50", "p90", "p99", "max", "mean"}`, in milliseconds.
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": round3(self.quantile_ms(0.50)),
            "p90_ms": round3(self.quantile_ms(0.90)),
            "p99_ms": round3(self.quantile_ms(0.99)),
            "max_ms": round3(self.max_ms()),
            "mean_ms": round3(self.mean_ms()),
        })
    }
}

/// Rounds to three decimals, for JSON output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds for people: two decimals under 10 ms, one above.
pub fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.1} ms")
    }
}

/// A progress bar on stderr of `len` steps, or hidden when stderr is not a
/// terminal (logs and pipes get only the final lines).
pub fn progress(len: u64, prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The progress bar of a timed run: the seconds elapsed and how many of
/// `unit` the connections have done, refreshed every 250 ms until
/// [`Ticker::finish`].
pub struct Ticker {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    /// Starts the bar for a run that began at `start` and lasts `duration`.
    pub fn start(
        prefix: &'static str,
        unit: &'static str,
        start: std::time::Instant,
        duration: Duration,
        done: Arc<AtomicU64>,
    ) -> Ticker {
        let bar = progress(duration.as_secs(), prefix);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            while start.elapsed() < duration {
                tokio::time::sleep(Duration::from_millis(250)).await;
                shown.set_position(start.elapsed().as_secs().min(duration.as_secs()));
                shown.set_message(format!("{} {unit}", done.load(Ordering::Relaxed)));
            }
        });
        Ticker { bar, task }
    }

    /// Stops refreshing and clears the bar.
    pub fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
