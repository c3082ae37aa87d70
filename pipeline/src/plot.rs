//! The loss-curve picture of a training run, redrawn from its metrics file.

use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const TERMS: [(&str, RGBColor); 7] = [
    ("total", BLACK),
    ("coarse", RGBColor(31, 119, 180)),
    ("splice", RGBColor(255, 127, 14)),
    ("fg_vid", RGBColor(44, 160, 44)),
    ("fg_word", RGBColor(214, 39, 40)),
    ("fg_vid_ctx", RGBColor(148, 103, 189)),
    ("fg_word_ctx", RGBColor(140, 86, 75)),
];

/// Registers a system font for labels once; without one the curves are
/// drawn unlabelled rather than not at all.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for path in ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"] {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws every loss term of `metrics` (JSON lines) against the step into
/// `png`, replacing it atomically.
pub fn plot_losses(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).with_context(|| format!("{}: cannot read", metrics.display()))?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
    let series: Vec<Series> = TERMS
        .iter()
        .map(|(name, colour)| {
            let pts = rows
                .iter()
                .filter_map(|r| Some((r["step"].as_f64()?, r[*name].as_f64()?)))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect();
            (*name, *colour, pts)
        })
        .collect();
    let max_step = rows.iter().filter_map(|r| r["step"].as_f64()).fold(1.0, f64::max);
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let tmp = png.with_file_name(format!(".{}.partial.png", png.file_stem().unwrap_or_default().to_string_lossy()));
    {
        let labels = font_available();
        let root = BitMapBackend::new(&tmp, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if labels {
            builder
                .caption("LocVTP pre-training losses", ("sans-serif", 22))
                .x_label_area_size(36)
                .y_label_area_size(56);
        }
        let mut chart = builder.build_cartesian_2d(1.0..max_step.max(2.0), (lo * 0.8..hi * 1.25).log_scale())?;
        if labels {
            chart.configure_mesh().x_desc("step").y_desc("loss (log scale)").draw()?;
        }
        for (name, colour, pts) in series {
            if pts.is_empty() {
                continue;
            }
            let drawn = chart.draw_series(LineSeries::new(pts, colour.stroke_width(2)))?;
            if labels {
                drawn
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            }
        }
        if labels {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }
        root.present()?;
    }
    std::fs::rename(&tmp, png).with_context(|| format!("{}: cannot write", png.display()))?;
    Ok(())
}
