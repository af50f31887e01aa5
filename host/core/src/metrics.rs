//! The shapes every layer measures in, so that `/metrics` reads alike throughout: latencies in
//! seconds on one set of buckets, sizes on another. Each layer owns its metrics and registers
//! them into the server's registry (there is no global one: two hosts in one process, as in the
//! tests, keep their counts apart).

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in seconds: 100 us to 60 s, about three per decade.
/// A journal commit is a fraction of a millisecond on SQLite; a lock wait or a participant
/// call can take seconds.
pub const LATENCY_BUCKETS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the size buckets: 1 to 1024, powers of two (writes per commit).
pub const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram of latencies in seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// A histogram of sizes (counts of things).
pub fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

/// Seconds since `since`, for a latency histogram.
pub fn seconds_since(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_rise_strictly() {
        for buckets in [&LATENCY_BUCKETS_S[..], &SIZE_BUCKETS[..]] {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        }
    }

    #[test]
    fn a_histogram_counts_what_it_observes() {
        let histogram = latency_histogram();
        histogram.observe(0.002);
        histogram.observe(3.0);
        let mut registry = Registry::default();
        registry.register("t", "a test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("t_count 2"), "{text}");
        assert!(text.contains("t_bucket{le=\"0.0025\"} 1"), "{text}");
    }
}
