//! Learning curves of one or more runs, from their `metrics.jsonl`, as PNG and SVG.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{CliError, Result};
use crate::folder::{METRICS, read_metrics};
use crate::record::Record;

/// One run's records and the name its curves carry.
pub struct Curves<'a> {
    /// Legend name.
    pub name: &'a str,
    /// The lines of its `metrics.jsonl`.
    pub records: &'a [Record],
}

/// A value a panel reads from a record (`None` for records of another kind).
type Read = fn(&Record) -> Option<f64>;

/// A record's values per teacher, in a run with several (`name`, value).
type Split = fn(&Record) -> Vec<(String, f64)>;

/// A panel: its title, its x, and the y it draws: the first of `y` the run has; with
/// `split`, one line per teacher where the run has several.
struct Panel {
    title: &'static str,
    x: Read,
    y: &'static [Read],
    split: Option<Split>,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "held-out accuracy vs generated tokens",
        x: |r| r.eval().map(|e| e.generated_tokens_total as f64),
        y: &[|r| r.eval().map(|e| e.accuracy)],
        split: None,
    },
    Panel {
        title: "train reward (mean) vs step",
        x: |r| r.train().map(|m| m.step as f64),
        y: &[|r| r.train().map(|m| m.reward_mean)],
        split: None,
    },
    Panel {
        title: "loss vs step",
        x: |r| r.train().map(|m| m.step as f64),
        y: &[|r| r.train().map(|m| m.loss)],
        split: None,
    },
    Panel {
        title: "divergence to the teacher (or entropy) vs step",
        x: |r| r.train().map(|m| m.step as f64),
        y: &[
            |r| r.train().and_then(|m| m.divergence_mean),
            |r| r.train().map(|m| m.entropy),
        ],
        split: Some(|r| {
            r.train()
                .map(|m| {
                    m.teachers
                        .iter()
                        .filter_map(|(name, t)| Some((name.clone(), t.divergence_mean?)))
                        .collect()
                })
                .unwrap_or_default()
        }),
    },
];

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// Registers a system font (DejaVu, Liberation, Arial) as `sans-serif` for titles and labels;
/// `false` when there is none, and plots are then drawn without text. Called once or often.
pub fn register_system_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// The `(x, y)` points of a panel in one run: `y` is the first of `panel.y` the run has.
fn points(panel: &Panel, records: &[Record]) -> Vec<(f64, f64)> {
    let Some(y) = panel.y.iter().find(|y| {
        records
            .iter()
            .any(|r| (panel.x)(r).is_some() && y(r).is_some())
    }) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| Some(((panel.x)(r)?, y(r)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}

/// A run's lines in a panel: `(label, points)`, one per teacher when the panel splits by
/// teacher and the run has several, else one.
fn series(panel: &Panel, run: &Curves) -> Vec<(String, Vec<(f64, f64)>)> {
    let split = panel.split.map(|split| {
        let mut lines: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        for record in run.records {
            if let Some(x) = (panel.x)(record) {
                for (name, y) in split(record) {
                    if x.is_finite() && y.is_finite() {
                        lines.entry(name).or_default().push((x, y));
                    }
                }
            }
        }
        lines
    });
    match split.filter(|lines| !lines.is_empty()) {
        Some(lines) => lines
            .into_iter()
            .map(|(name, points)| (format!("{} / {name}", run.name), points))
            .collect(),
        None => vec![(run.name.to_string(), points(panel, run.records))],
    }
}

/// Reads the `metrics.jsonl` of each named run folder and draws them together at `stem`
/// ([`write_curves`]); returns each run's records, in order.
pub fn plot_runs(runs: &[(&str, &Path)], stem: &Path) -> Result<Vec<Vec<Record>>> {
    let records = runs
        .iter()
        .map(|(_, dir)| read_metrics(&dir.join(METRICS)))
        .collect::<Result<Vec<_>>>()?;
    let curves: Vec<Curves> = runs
        .iter()
        .zip(&records)
        .map(|((name, _), records)| Curves { name, records })
        .collect();
    write_curves(&curves, stem)?;
    Ok(records)
}

/// Writes `stem.png` and `stem.svg`: four panels (held-out accuracy against generated tokens,
/// train reward, loss, divergence) with one line per run.
pub fn write_curves(runs: &[Curves], stem: &Path) -> Result<()> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(
        BitMapBackend::new(&png, (1200, 800)).into_drawing_area(),
        runs,
    )
    .map_err(|e| plot_error(&png, e))?;
    draw(SVGBackend::new(&svg, (1200, 800)).into_drawing_area(), runs)
        .map_err(|e| plot_error(&svg, e))
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Plot {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Curves]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let text = register_system_font();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((2, 2)).iter().zip(&PANELS) {
        let series: Vec<(String, Vec<(f64, f64)>)> =
            runs.iter().flat_map(|r| series(panel, r)).collect();
        let all = series.iter().flat_map(|(_, points)| points);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            continue;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50);
        if text {
            builder.caption(panel.title, ("sans-serif", 18));
        }
        let mut chart = builder.build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))?;
        let mut mesh = chart.configure_mesh();
        if !text {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let lines = series.len();
        for ((label, points), color) in series.into_iter().zip(COLORS.iter().cycle()) {
            let line = chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
            if text {
                line.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if text && lines > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
