//! Held-out accuracy against generated tokens for arms run with several seeds: each arm's
//! mean over seeds as a line with markers, a band of ± one standard deviation, and reference
//! lines (a teacher, a start), with axis titles and a colour-blind-safe palette (Okabe–Ito).

use std::path::Path;

use plotters::prelude::*;

use crate::error::{CliError, Result};
use crate::folder::{METRICS, read_metrics};
use crate::plot::register_system_font;

/// `(generated tokens, accuracy)` of each evaluation in the run folder `dir`, in order (for
/// SFT on teacher samples the tokens are the teacher's, of the samples trained on so far).
pub fn accuracy_curve(dir: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(read_metrics(&dir.join(METRICS))?
        .iter()
        .filter_map(|r| r.eval())
        .map(|e| (e.generated_tokens_total, e.accuracy))
        .collect())
}

/// One arm: its name and each seed's `(generated tokens, accuracy)` evaluations, in order.
pub struct Arm<'a> {
    /// Legend name.
    pub name: &'a str,
    /// One curve per seed.
    pub seeds: Vec<Vec<(u64, f64)>>,
}

/// The mean and sample standard deviation of `values` (sd 0 for one value).
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = match values.len() {
        0 | 1 => 0.0,
        _ => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0),
    };
    (mean, var.sqrt())
}

/// A seed's accuracy at `tokens`: its last evaluation at or before it (`None` before its
/// first).
pub fn at(curve: &[(u64, f64)], tokens: u64) -> Option<f64> {
    curve
        .iter()
        .rev()
        .find(|(t, _)| *t <= tokens)
        .map(|(_, a)| *a)
}

/// `(tokens, mean, sd)` of an arm on `marks`, where every seed has an evaluation.
pub fn summary(arm: &Arm, marks: &[u64]) -> Vec<(u64, f64, f64)> {
    marks
        .iter()
        .filter_map(|&mark| {
            let values: Option<Vec<f64>> = arm.seeds.iter().map(|c| at(c, mark)).collect();
            let (mean, sd) = mean_sd(&values?);
            Some((mark, mean, sd))
        })
        .collect()
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];

/// Writes `stem.png` and `stem.svg`: each arm's mean over seeds on `marks` with a ± sd band,
/// and a dashed horizontal line for each `(label, accuracy)` of `references`.
pub fn write_bands(
    arms: &[Arm],
    marks: &[u64],
    references: &[(&str, f64)],
    stem: &Path,
) -> Result<()> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let error = |path: &Path, e: Box<dyn std::error::Error>| CliError::Plot {
        path: path.to_path_buf(),
        problem: e.to_string(),
    };
    draw(
        BitMapBackend::new(&png, (1000, 650)).into_drawing_area(),
        arms,
        marks,
        references,
    )
    .map_err(|e| error(&png, e))?;
    draw(
        SVGBackend::new(&svg, (1000, 650)).into_drawing_area(),
        arms,
        marks,
        references,
    )
    .map_err(|e| error(&svg, e))
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    arms: &[Arm],
    marks: &[u64],
    references: &[(&str, f64)],
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let text = register_system_font();
    root.fill(&WHITE)?;
    let x1 = marks.last().copied().unwrap_or(1).max(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70);
    if text {
        builder.caption(
            "held-out accuracy against generated tokens (mean ± sd over seeds)",
            ("sans-serif", 20),
        );
    }
    let mut chart = builder.build_cartesian_2d(0.0..x1, 0.0..1.0)?;
    let label = |x: &f64| token_label(*x, x1);
    let mut mesh = chart.configure_mesh();
    match text {
        true => mesh
            .x_label_formatter(&label)
            .x_desc("generated tokens (the student's samples; for SFT, the teacher's)")
            .y_desc("held-out accuracy (greedy, exact answer)")
            .axis_desc_style(("sans-serif", 16)),
        false => mesh.x_labels(0).y_labels(0),
    };
    mesh.draw()?;
    for (i, (label, accuracy)) in references.iter().enumerate() {
        let style = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(1);
        let dashes = (0..40).filter(|d| d % 2 == i % 2).map(|d| {
            let (a, b) = (d as f64 * x1 / 40.0, (d + 1) as f64 * x1 / 40.0);
            PathElement::new(vec![(a, *accuracy), (b, *accuracy)], style)
        });
        chart.draw_series(dashes)?;
        if text {
            chart.draw_series(std::iter::once(Text::new(
                format!("{label} {accuracy:.2}"),
                (x1 * 0.8, accuracy + 0.015),
                ("sans-serif", 14),
            )))?;
        }
    }
    for (arm, color) in arms.iter().zip(PALETTE.iter().cycle()) {
        let points = summary(arm, marks);
        let upper = points.iter().map(|&(t, m, s)| (t as f64, (m + s).min(1.0)));
        let lower = points
            .iter()
            .rev()
            .map(|&(t, m, s)| (t as f64, (m - s).max(0.0)));
        chart.draw_series(std::iter::once(Polygon::new(
            upper.chain(lower).collect::<Vec<_>>(),
            color.mix(0.18).filled(),
        )))?;
        let mean: Vec<(f64, f64)> = points.iter().map(|&(t, m, _)| (t as f64, m)).collect();
        let line = chart.draw_series(LineSeries::new(mean.clone(), color.stroke_width(2)))?;
        if text {
            let legend = format!("{} ({} seeds)", arm.name, arm.seeds.len());
            line.label(legend).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(mean.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// A tick label of `x` generated tokens on an axis to `end`: thousands (`12k`) from 20 000 on,
/// the count itself below (`500`, `1500`), where thousands would round ticks together.
fn token_label(x: f64, end: f64) -> String {
    if end >= 20_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_each_seeds_last_evaluation_at_a_mark_averaged() {
        let arm = Arm {
            name: "a",
            seeds: vec![vec![(0, 0.1), (10, 0.5)], vec![(0, 0.3), (12, 0.7)]],
        };
        let s = summary(&arm, &[5, 11, 12]);
        assert_eq!(s.len(), 3);
        assert!((s[0].1 - 0.2).abs() < 1e-12 && (s[0].2 - 0.02f64.sqrt()).abs() < 1e-12);
        assert!((s[1].1 - 0.4).abs() < 1e-12);
        assert!((s[2].1 - 0.6).abs() < 1e-12);
        assert_eq!(mean_sd(&[1.0]), (1.0, 0.0));
    }
}
