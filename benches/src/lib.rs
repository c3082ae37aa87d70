//! Shared settings of the criterion benchmarks in `benches/benches/`.

use criterion::Criterion;
use std::time::Duration;

/// Few samples and short windows, so that the whole set runs in about a
/// minute on two cores.
pub fn quick(warm_up: Duration, measurement: Duration) -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(warm_up).measurement_time(measurement).without_plots()
}
