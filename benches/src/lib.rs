//! Shared settings of the criterion benchmarks in `benches/benches/`.

use criterion::Criterion;
use std::time::Duration;

/// Few samples and short windows, so that the whole set runs in about a
/// minute on two cores. Memory is kept as `locvtp-flow` keeps it, so that
/// the operators are timed as they run there.
pub fn quick(warm_up: Duration, measurement: Duration) -> Criterion {
    locvtp_model::memory::keep_freed_memory();
    Criterion::default().sample_size(10).warm_up_time(warm_up).measurement_time(measurement).without_plots()
}
