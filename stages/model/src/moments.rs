//! Moments of a video and how grounding is scored: temporal IoU,
//! non-maximum suppression, recall at n for an IoU threshold and mean IoU,
//! each with a 95% interval, and the three trivial baselines every
//! grounding result is reported next to (a random window, the whole video,
//! and the best fixed window learned from the training annotations).
//!
//! Plain Rust, no tensors: the zero-shot evaluation, the grounding trainer
//! (model selection on validation) and the evaluation sink share it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `[start, end]` in seconds (or in fractions of the video, where said).
pub type Moment = (f64, f64);

/// Temporal IoU of two moments; 0 when both are empty.
pub fn iou(a: Moment, b: Moment) -> f64 {
    let inter = (a.1.min(b.1) - a.0.max(b.0)).max(0.0);
    let union = (a.1 - a.0) + (b.1 - b.0) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression over moments sorted best first: keeps the
/// best, drops every later moment whose IoU with a kept one exceeds
/// `threshold`, and stops after `top_k` kept moments.
pub fn nms(sorted: &[Moment], threshold: f64, top_k: usize) -> Vec<Moment> {
    let mut kept: Vec<Moment> = Vec::with_capacity(top_k);
    for &m in sorted {
        if kept.len() >= top_k {
            break;
        }
        if kept.iter().all(|&k| iou(k, m) <= threshold) {
            kept.push(m);
        }
    }
    kept
}

/// A metric key as written in result files: `R@1_IoU0.5`.
pub fn recall_key(n: usize, threshold: f64) -> String {
    format!("R@{n}_IoU{threshold}")
}

/// Whether one of the first `n` moments reaches IoU `threshold` with the
/// truth (the protocol's ">= m"; 2D-TAN's code uses a strict ">", which
/// differs only on exact ties).
pub fn hit(ranked: &[Moment], truth: Moment, n: usize, threshold: f64) -> bool {
    ranked.iter().take(n).any(|&m| iou(m, truth) >= threshold)
}

/// A measured proportion or mean with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Wilson score 95% interval of `successes` out of `n` (z = 1.96): unlike
/// the normal approximation it stays inside [0, 1] and is honest near 0
/// and 1, where small test sets put recall at high IoU.
pub fn wilson(successes: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate { value: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let z = 1.959_963_984_540_054f64;
    let (k, n) = (successes as f64, n as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Estimate { value: p, low: (centre - half).max(0.0), high: (centre + half).min(1.0) }
}

/// Percentile bootstrap 95% interval of the mean of `values` (queries
/// resampled with replacement `resamples` times, seeded): for per-query
/// values that are not hit-or-miss (IoU, a random window's probability).
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Estimate {
    let n = values.len();
    if n == 0 {
        return Estimate { value: f64::NAN, low: f64::NAN, high: f64::NAN };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> =
        (0..resamples.max(1)).map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Estimate { value: mean, low: at(0.025), high: at(0.975) }
}

/// How the intervals of [`score`] are computed, for result files.
pub const INTERVAL_METHOD: &str = "95% intervals: Wilson score for recalls (each query hits or misses); \
percentile bootstrap over queries (seeded) for mean IoU and for the random window's expectations";

/// One query's ranked moments (after NMS) and its truth, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub truth: Moment,
    pub duration: f64,
    pub moments: Vec<Moment>,
}

/// Per-query values of one method, from which every metric follows.
pub trait Method {
    /// Chance that the query counts as a hit for R@n at `threshold`
    /// (0 or 1 for a method that predicts; an expectation for the random
    /// window).
    fn hit(&self, query: usize, n: usize, threshold: f64) -> f64;
    /// IoU of the top moment (its expectation for the random window).
    fn top_iou(&self, query: usize) -> f64;
    /// Whether `hit` is always 0 or 1 (a Wilson interval applies).
    fn binary(&self) -> bool;
}

/// A method that ranks moments for each query.
pub struct Predictions<'a>(pub &'a [Ranked]);

impl Method for Predictions<'_> {
    fn hit(&self, q: usize, n: usize, threshold: f64) -> f64 {
        let r = &self.0[q];
        f64::from(u8::from(hit(&r.moments, r.truth, n, threshold)))
    }

    fn top_iou(&self, q: usize) -> f64 {
        let r = &self.0[q];
        r.moments.first().map(|&m| iou(m, r.truth)).unwrap_or(0.0)
    }

    fn binary(&self) -> bool {
        true
    }
}

/// Every metric of one method over `queries` queries: R@n at each
/// threshold, and mean IoU of the top moment, each with its interval.
pub fn score(
    method: &dyn Method,
    queries: usize,
    recalls: &[usize],
    thresholds: &[f64],
    seed: u64,
) -> Vec<(String, Estimate)> {
    let mut out = Vec::new();
    for &n in recalls {
        for &m in thresholds {
            let per_query: Vec<f64> = (0..queries).map(|q| method.hit(q, n, m)).collect();
            let estimate = if method.binary() {
                wilson(per_query.iter().filter(|&&h| h > 0.5).count(), queries)
            } else {
                bootstrap_mean(&per_query, BOOTSTRAP_RESAMPLES, seed)
            };
            out.push((recall_key(n, m), estimate));
        }
    }
    let ious: Vec<f64> = (0..queries).map(|q| method.top_iou(q)).collect();
    out.push(("mIoU".to_string(), bootstrap_mean(&ious, BOOTSTRAP_RESAMPLES, seed)));
    out
}

/// Resamples of every bootstrap interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The random-window baseline: a candidate drawn uniformly from the
/// method's own candidates, scored by its exact expectation (no sampling).
/// For R@n, n distinct candidates drawn uniformly without replacement.
pub struct RandomWindow<'a> {
    /// Per query: its candidates (seconds) and its truth.
    pub queries: Vec<(&'a [Moment], Moment)>,
}

/// `1 - C(total - good, n) / C(total, n)`: the chance that n distinct draws
/// from `total` items of which `good` are good include a good one.
fn any_of_n(total: usize, good: usize, n: usize) -> f64 {
    if good == 0 {
        return 0.0;
    }
    if n >= total || total - good < n {
        return 1.0;
    }
    let mut none = 1.0;
    for k in 0..n {
        none *= (total - good - k) as f64 / (total - k) as f64;
    }
    1.0 - none
}

impl Method for RandomWindow<'_> {
    fn hit(&self, q: usize, n: usize, threshold: f64) -> f64 {
        let (candidates, truth) = self.queries[q];
        let good = candidates.iter().filter(|&&c| iou(c, truth) >= threshold).count();
        any_of_n(candidates.len(), good, n)
    }

    fn top_iou(&self, q: usize) -> f64 {
        let (candidates, truth) = self.queries[q];
        if candidates.is_empty() {
            return 0.0;
        }
        candidates.iter().map(|&c| iou(c, truth)).sum::<f64>() / candidates.len() as f64
    }

    fn binary(&self) -> bool {
        false
    }
}

/// A truth as fractions of its video's duration.
pub fn as_fraction(truth: Moment, duration: f64) -> Moment {
    let d = duration.max(1e-9);
    ((truth.0 / d).clamp(0.0, 1.0), (truth.1 / d).clamp(0.0, 1.0))
}

/// Fixed windows tried by [`best_fixed_windows`]: every `[a, b]` on a grid
/// of hundredths with `a < b`.
fn fixed_grid() -> Vec<Moment> {
    let steps = 100;
    let mut out = Vec::with_capacity(steps * (steps + 1) / 2);
    for a in 0..steps {
        for b in a + 1..=steps {
            out.push((a as f64 / steps as f64, b as f64 / steps as f64));
        }
    }
    out
}

/// The best fixed windows learned from training truths (as fractions of
/// their videos): for R@1 at each threshold, the window with the most
/// training hits; for R@n, n windows chosen greedily, each adding the most
/// training queries not yet hit; for mean IoU, the window with the highest
/// mean training IoU. Among windows with as many hits, the one with the
/// highest mean training IoU wins (many windows clear a threshold; the one
/// fitting the truths best is the stronger baseline), then the first on
/// the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedWindows {
    /// `(R@n key, windows)`: for R@1 one window, for R@n up to n.
    pub for_recall: Vec<(String, Vec<Moment>)>,
    pub for_miou: Moment,
    /// Training queries the windows were learned from.
    pub learned_from: usize,
}

pub fn best_fixed_windows(train: &[Moment], recalls: &[usize], thresholds: &[f64]) -> FixedWindows {
    let grid = fixed_grid();
    let ious: Vec<Vec<f64>> = grid.iter().map(|&w| train.iter().map(|&t| iou(w, t)).collect()).collect();
    let mean = |w: usize| ious[w].iter().sum::<f64>();
    let mut for_recall = Vec::new();
    for &n in recalls {
        for &m in thresholds {
            let mut covered = vec![false; train.len()];
            let mut chosen = Vec::new();
            for _ in 0..n.max(1) {
                let gain = |w: usize| ious[w].iter().zip(&covered).filter(|(&o, &c)| !c && o >= m).count();
                let best = (0..grid.len())
                    .max_by(|&a, &b| gain(a).cmp(&gain(b)).then(mean(a).total_cmp(&mean(b))).then(b.cmp(&a)))
                    .unwrap_or(0);
                for (c, &o) in covered.iter_mut().zip(&ious[best]) {
                    *c |= o >= m;
                }
                chosen.push(grid[best]);
            }
            for_recall.push((recall_key(n, m), chosen));
        }
    }
    let best_miou = (0..grid.len()).max_by(|&a, &b| mean(a).total_cmp(&mean(b)).then(b.cmp(&a))).unwrap_or(0);
    FixedWindows { for_recall, for_miou: grid[best_miou], learned_from: train.len() }
}

/// A fixed set of windows (fractions) applied to every query: the whole
/// video is `[(0, 1)]`; the best fixed windows carry one set per metric.
pub struct FixedMethod<'a> {
    pub queries: &'a [(Moment, f64)],
    pub windows: &'a FixedWindows,
}

impl FixedMethod<'_> {
    fn scaled(&self, q: usize, w: Moment) -> Moment {
        let d = self.queries[q].1;
        (w.0 * d, w.1 * d)
    }
}

impl Method for FixedMethod<'_> {
    fn hit(&self, q: usize, n: usize, threshold: f64) -> f64 {
        let key = recall_key(n, threshold);
        let windows = self.windows.for_recall.iter().find(|(k, _)| *k == key).map(|(_, w)| w.as_slice());
        let truth = self.queries[q].0;
        let hit = windows.unwrap_or(&[]).iter().take(n).any(|&w| iou(self.scaled(q, w), truth) >= threshold);
        f64::from(u8::from(hit))
    }

    fn top_iou(&self, q: usize) -> f64 {
        iou(self.scaled(q, self.windows.for_miou), self.queries[q].0)
    }

    fn binary(&self) -> bool {
        true
    }
}

/// The whole video as the one window of every metric.
pub fn whole_video(recalls: &[usize], thresholds: &[f64]) -> FixedWindows {
    let mut for_recall = Vec::new();
    for &n in recalls {
        for &m in thresholds {
            for_recall.push((recall_key(n, m), vec![(0.0, 1.0)]));
        }
    }
    FixedWindows { for_recall, for_miou: (0.0, 1.0), learned_from: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_overlapping_nested_disjoint_and_empty_moments() {
        assert!((iou((0.0, 2.0), (1.0, 3.0)) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou((1.0, 2.0), (0.0, 4.0)), 0.25);
        assert_eq!(iou((0.0, 1.0), (2.0, 3.0)), 0.0);
        assert_eq!(iou((1.0, 1.0), (1.0, 1.0)), 0.0);
    }

    #[test]
    fn nms_drops_overlaps_above_the_threshold_and_stops_at_top_k() {
        let sorted = [(0.0, 4.0), (0.0, 3.9), (5.0, 6.0), (0.0, 2.0), (6.0, 8.0), (8.0, 9.0)];
        // (0, 2) has IoU 0.5 with (0, 4): kept at 0.5, dropped at 0.45.
        assert_eq!(nms(&sorted, 0.5, 5), [(0.0, 4.0), (5.0, 6.0), (0.0, 2.0), (6.0, 8.0), (8.0, 9.0)]);
        assert_eq!(nms(&sorted, 0.45, 3), [(0.0, 4.0), (5.0, 6.0), (6.0, 8.0)]);
    }

    #[test]
    fn wilson_interval_matches_the_textbook_values() {
        // 40 of 100: Wilson 95% interval (0.3094, 0.4980).
        let e = wilson(40, 100);
        assert!((e.low - 0.3094).abs() < 5e-4 && (e.high - 0.4980).abs() < 5e-4, "{e:?}");
        let zero = wilson(0, 400);
        assert!(zero.low.abs() < 1e-12);
        assert!(zero.high > 0.0 && zero.high < 0.01);
        // At 400 queries a difference of 0.1 lies outside the interval.
        let half = wilson(200, 400);
        assert!(half.high - half.value < 0.05 && half.value - half.low < 0.05, "{half:?}");
    }

    #[test]
    fn bootstrap_interval_is_seeded_and_brackets_the_mean() {
        let values: Vec<f64> = (0..200).map(|i| (i % 10) as f64 / 10.0).collect();
        let a = bootstrap_mean(&values, 500, 3);
        assert_eq!(a, bootstrap_mean(&values, 500, 3));
        assert!((a.value - 0.45).abs() < 1e-12);
        assert!(a.low < 0.45 && a.high > 0.45 && a.high - a.low < 0.15, "{a:?}");
    }

    #[test]
    fn random_window_is_the_exact_expectation_over_candidates() {
        let candidates = [(0.0, 1.0), (1.0, 2.0), (0.0, 2.0), (2.0, 4.0)];
        let truth = (0.0, 2.0);
        let r = RandomWindow { queries: vec![(&candidates, truth)] };
        // IoUs 0.5, 0.5, 1, 0: at 0.5 three of four hit; at 0.7 one.
        assert_eq!(r.hit(0, 1, 0.5), 0.75);
        assert_eq!(r.hit(0, 1, 0.7), 0.25);
        // Two distinct draws miss at 0.7 only if both avoid the one hit: 3/4 * 2/3.
        assert!((r.hit(0, 2, 0.7) - 0.5).abs() < 1e-12);
        assert_eq!(r.hit(0, 5, 0.7), 1.0);
        assert_eq!(r.top_iou(0), 0.5);
    }

    #[test]
    fn the_best_fixed_window_is_learned_from_training_truths() {
        // Training truths all near the start of their videos.
        let train = [(0.0, 0.3), (0.0, 0.32), (0.02, 0.3), (0.6, 1.0)];
        let w = best_fixed_windows(&train, &[1, 5], &[0.5, 0.7]);
        let r1 = &w.for_recall.iter().find(|(k, _)| k == "R@1_IoU0.7").unwrap().1;
        assert_eq!(r1.len(), 1);
        assert!(train[..3].iter().all(|&t| iou(r1[0], t) >= 0.7), "{r1:?}");
        // Five windows cover the late truth too.
        let r5 = &w.for_recall.iter().find(|(k, _)| k == "R@5_IoU0.7").unwrap().1;
        assert!(r5.iter().any(|m| iou(*m, (0.6, 1.0)) >= 0.7), "{r5:?}");
        // Applied to test videos in seconds.
        let test = [((0.0, 3.0), 10.0), ((5.0, 10.0), 10.0)];
        let m = FixedMethod { queries: &test, windows: &w };
        assert_eq!(m.hit(0, 1, 0.7), 1.0);
        assert_eq!(m.hit(1, 1, 0.7), 0.0);
        let whole = whole_video(&[1], &[0.5]);
        let m = FixedMethod { queries: &test, windows: &whole };
        assert_eq!((m.hit(0, 1, 0.5), m.hit(1, 1, 0.5)), (0.0, 1.0));
        assert_eq!(m.top_iou(0), 0.3);
        // Many windows hit every truth at 0.3; the one fitting them best wins.
        let same = best_fixed_windows(&[(0.0, 0.2); 3], &[1], &[0.3]);
        assert_eq!(same.for_recall[0].1, [(0.0, 0.2)]);
    }

    #[test]
    fn scores_of_predictions_carry_wilson_intervals() {
        let ranked = vec![
            Ranked { truth: (0.0, 2.0), duration: 4.0, moments: vec![(0.0, 2.0), (2.0, 4.0)] },
            Ranked { truth: (2.0, 4.0), duration: 4.0, moments: vec![(0.0, 2.0), (2.0, 4.0)] },
        ];
        let s = score(&Predictions(&ranked), 2, &[1, 5], &[0.5], 0);
        let get = |k: &str| s.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(get("R@1_IoU0.5").value, 0.5);
        assert_eq!(get("R@5_IoU0.5").value, 1.0);
        assert_eq!(get("R@1_IoU0.5"), wilson(1, 2));
        assert_eq!(get("mIoU").value, 0.5);
    }
}
