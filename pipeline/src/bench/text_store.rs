//! `locvtp-flow bench --text-store N`: the caption-embedding store at scale.
//! N synthetic entries of a fixed shape (`--text-hidden`, 8 words) go into
//! a fresh store; then a second process-like pass reopens it and looks up
//! random captions. Printed: build time, size on disk, look-ups per second
//! and the peak resident memory, next to what the entries themselves
//! weigh. The real encoder's own rate (all-MiniLM-L6-v2 here) is measured
//! on a smaller set, since it, not the store, bounds how fast a store
//! fills.

use super::BenchArgs;
use crate::run::summary::peak_rss_mb;
use anyhow::Result;
use locvtp_operators::text_cache::{Entry, TextCache, TextStore};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::time::Instant;

const WORDS: usize = 8;

fn caption(i: usize) -> String {
    format!("caption number {i} of the benchmark")
}

pub(super) fn bench_text_store(args: &BenchArgs, n: usize) -> Result<Value> {
    let hidden = args.text_hidden;
    let dir = std::path::absolute(args.out.join("text-store"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let rss_before = peak_rss_mb();
    let started = Instant::now();
    let mut store = TextStore::open(&dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for i in 0..n {
        let sentence: Vec<f32> = (0..hidden).map(|_| rng.random_range(-1.0..1.0)).collect();
        let words: Vec<f32> = (0..hidden * WORDS).map(|_| rng.random_range(-1.0..1.0)).collect();
        store.put(&caption(i), Entry { sentence, words, n_words: WORDS })?;
    }
    store.seal()?;
    let build = started.elapsed().as_secs_f64();
    let disk = store.disk_bytes();
    drop(store);
    let mut store = TextStore::open(&dir)?;
    let lookups = n.min(200_000);
    let started = Instant::now();
    let mut found = 0usize;
    for _ in 0..lookups {
        let i = rng.random_range(0..n);
        found += usize::from(store.get(&caption(i)).is_some());
    }
    let lookup = started.elapsed().as_secs_f64();
    anyhow::ensure!(found == lookups, "{} of {lookups} captions not found", lookups - found);
    let raw = n as f64 * (4 * hidden * (WORDS + 1)) as f64;
    println!("text store: {n} captions of {WORDS} words, hidden {hidden}");
    println!("  build {build:.1} s ({:.0} entries/s)", n as f64 / build);
    println!("  on disk {:.1} MB ({:.2}x the raw floats)", disk as f64 / 1e6, disk as f64 / raw);
    println!("  {lookups} random look-ups from a reopened store: {:.0} per second", lookups as f64 / lookup);
    println!("  peak RSS {:.0} MB (before the store {rss_before:.0} MB)", peak_rss_mb());
    let mut report = json!({
        "captions": n, "words": WORDS, "hidden": hidden, "build_s": build, "disk_bytes": disk,
        "raw_bytes": raw, "lookups_per_s": lookups as f64 / lookup, "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    });
    if let Some(encoder_dir) = locvtp_model::text::default_text_encoder_dir() {
        let encoder = locvtp_model::text::TextEncoder::load(&encoder_dir, tch::Device::Cpu)?;
        let cache_dir = dir.join("encoder");
        let mut cache = TextCache::new(encoder, Some(cache_dir))?;
        let texts: Vec<String> = (0..args.text_encoder_captions).map(caption).collect();
        let started = Instant::now();
        for chunk in texts.chunks(256) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            cache.entries(&refs)?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  all-MiniLM-L6-v2 (CPU): {} captions in {secs:.1} s ({:.0}/s, {} forward passes)",
            texts.len(),
            texts.len() as f64 / secs,
            cache.batches
        );
        report["encoder"] = json!({ "captions": texts.len(), "seconds": secs, "forward_passes": cache.batches });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}
