//! An experiment's table and mean curves.

use std::path::Path;

use opd_cli::bands::mean_sd;
use plotters::prelude::*;

use crate::runs::Finished;

/// An arm's label and its runs (one per seed).
pub type Results<'a> = [(&'a str, Vec<Finished>)];

/// The accuracy the table counts tokens to, and the sentence that says what it is.
pub struct Goal {
    pub accuracy: f64,
    pub text: String,
}

/// Steps averaged at each end of a run.
const EDGE: usize = 3;

/// The finite values of `f(step)` over a run's steps.
fn series(run: &Finished, f: impl Fn(&opd_trainers::StepMetrics) -> Option<f64>) -> Vec<f64> {
    run.steps()
        .filter_map(f)
        .filter(|v| v.is_finite())
        .collect()
}

/// The mean of the first and of the last `EDGE` of `values` (not empty).
fn edges(values: &[f64]) -> (f64, f64) {
    let n = values.len().min(EDGE);
    let mean = |part: &[f64]| part.iter().sum::<f64>() / n as f64;
    (mean(&values[..n]), mean(&values[values.len() - n..]))
}

/// `f(step)` averaged over the first and over the last `EDGE` steps of each run, then over the
/// runs; `None` when no step has it.
fn first_and_last(
    runs: &[Finished],
    f: impl Fn(&opd_trainers::StepMetrics) -> Option<f64>,
) -> Option<(f64, f64)> {
    let (firsts, lasts): (Vec<f64>, Vec<f64>) = runs
        .iter()
        .map(|run| series(run, &f))
        .filter(|values| !values.is_empty())
        .map(|values| edges(&values))
        .unzip();
    (!firsts.is_empty()).then(|| (mean_sd(&firsts).0, mean_sd(&lasts).0))
}

fn arrow(pair: Option<(f64, f64)>, digits: usize) -> String {
    pair.map_or("–".into(), |(a, b)| {
        format!("{a:.digits$} → {b:.digits$}")
    })
}

/// The Markdown table of an experiment: per arm, final held-out accuracy (mean ± sd, per
/// seed), tokens and training seconds, tokens to the target, each old task after training, and
/// the diagnostics over the first and last three steps (student entropy, mean per-token
/// divergence to the teacher, top-k overlap, the shared set's mass under the teacher) with the
/// collapse watch's warnings.
pub fn table(command: &str, goal: Option<&Goal>, old: &[(&str, f64)], results: &Results) -> String {
    let mut text = format!("`{command}`\n\n");
    if let Some(goal) = goal {
        text += &format!("{} ", goal.text);
    }
    let before: Vec<f64> = results
        .iter()
        .flat_map(|(_, runs)| {
            runs.iter()
                .filter_map(|r| r.evals().next().map(|e| e.accuracy))
        })
        .collect();
    text += &format!(
        "Before training (the base model: LoRA starts at zero): {:.2}",
        mean_sd(&before).0
    );
    for (name, before) in old {
        text += &format!("; on the old task {name} {before:.2}");
    }
    text +=
        ".\n\n| arm | held-out accuracy (mean ± sd) | per seed | tokens (mean) | train s (mean) |";
    let mut columns = 5;
    if goal.is_some() {
        text += " tokens to the target (per seed) |";
        columns += 1;
    }
    for (name, _) in old {
        text += &format!(" {name} after (mean ± sd) | per seed |");
        columns += 2;
    }
    text += " entropy (first → last steps) | divergence to the teacher | teacher entropy | top-k overlap | shared mass, teacher | collapse warnings (runs) |\n";
    columns += 6;
    text += &format!("|{}\n", "---|".repeat(columns));
    for (label, runs) in results {
        let accuracy: Vec<f64> = runs.iter().map(Finished::final_accuracy).collect();
        let (mean, sd) = mean_sd(&accuracy);
        let per_seed: Vec<String> = accuracy.iter().map(|a| format!("{a:.2}")).collect();
        let tokens = runs.iter().map(|r| r.tokens() as f64).sum::<f64>() / runs.len() as f64;
        let seconds = runs.iter().map(|r| r.seconds).sum::<f64>() / runs.len() as f64;
        text += &format!(
            "| {label} | {mean:.3} ± {sd:.3} | {} | {tokens:.0} | {seconds:.0} |",
            per_seed.join(", ")
        );
        if let Some(goal) = goal {
            let reached: Vec<String> = runs
                .iter()
                .map(|r| {
                    r.tokens_to(goal.accuracy)
                        .map_or("not reached".into(), |t| t.to_string())
                })
                .collect();
            text += &format!(" {} |", reached.join(", "));
        }
        for i in 0..old.len() {
            let after: Vec<f64> = runs.iter().map(|r| r.old_tasks[i]).collect();
            let (m, s) = mean_sd(&after);
            let each: Vec<String> = after.iter().map(|a| format!("{a:.2}")).collect();
            text += &format!(" {m:.3} ± {s:.3} | {} |", each.join(", "));
        }
        let warned = runs
            .iter()
            .filter(|r| r.steps().any(|m| !m.warnings.is_empty()))
            .count();
        text += &format!(
            " {} | {} | {} | {} | {} | {warned} of {} |\n",
            arrow(first_and_last(runs, |m| Some(m.entropy)), 2),
            arrow(first_and_last(runs, |m| m.divergence_mean), 3),
            arrow(first_and_last(runs, |m| m.teacher_entropy), 2),
            arrow(first_and_last(runs, |m| m.topk_overlap), 2),
            arrow(first_and_last(runs, |m| m.shared_mass_teacher), 3),
            runs.len()
        );
    }
    text
}
/// Mean held-out accuracy (over seeds, at each evaluation) against mean generated tokens and
/// against mean training seconds, one line per arm.
pub fn plot(
    stem: &Path,
    results: &[(&str, Vec<Finished>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<(&str, Vec<Point>)> = results
        .iter()
        .map(|(label, runs)| {
            let n = runs.iter().map(|r| r.evals().count()).min().unwrap_or(0);
            let points = (0..n)
                .map(|i| {
                    let at: Vec<Point> = runs
                        .iter()
                        .map(|r| {
                            let e = r.evals().nth(i).expect("n evaluations");
                            (
                                e.generated_tokens_total as f64,
                                r.seconds_at(e.step),
                                e.accuracy,
                            )
                        })
                        .collect();
                    let k = at.len() as f64;
                    (
                        at.iter().map(|p| p.0).sum::<f64>() / k,
                        at.iter().map(|p| p.1).sum::<f64>() / k,
                        at.iter().map(|p| p.2).sum::<f64>() / k,
                    )
                })
                .collect();
            (*label, points)
        })
        .collect();
    for (path, svg) in [
        (stem.with_extension("png"), false),
        (stem.with_extension("svg"), true),
    ] {
        if svg {
            draw(
                SVGBackend::new(&path, (1200, 450)).into_drawing_area(),
                &series,
            )?;
        } else {
            draw(
                BitMapBackend::new(&path, (1200, 450)).into_drawing_area(),
                &series,
            )?;
        }
    }
    Ok(())
}

/// A point of a mean curve: (generated tokens, training seconds, held-out accuracy).
type Point = (f64, f64, f64);

/// A panel's title and what its x reads from a point.
type Axis = (&'static str, fn(&Point) -> f64);

/// Each arm's mean curve.
type Series<'a> = [(&'a str, Vec<Point>)];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &Series,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let text = opd_cli::plot::register_system_font();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let axes: [Axis; 2] = [
        ("mean held-out accuracy vs generated tokens", |p| p.0),
        ("mean held-out accuracy vs training seconds", |p| p.1),
    ];
    for (area, (title, x)) in panels.iter().zip(axes) {
        let x1 = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(x))
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45);
        if text {
            builder.caption(title, ("sans-serif", 18));
        }
        let mut chart = builder.build_cartesian_2d(0.0..x1, 0.0..1.0)?;
        let mut mesh = chart.configure_mesh();
        if !text {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for ((label, points), color) in series.iter().zip(colors.iter().cycle()) {
            let line = chart.draw_series(LineSeries::new(
                points.iter().map(|p| (x(p), p.2)),
                color.stroke_width(2),
            ))?;
            if text {
                let color = *color;
                line.label(*label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

/// Each arm against the first (A), paired twice. Over seeds: Welch's t on the final held-out
/// accuracies, `t = (m_A − m_B) / √(s_A²/n_A + s_B²/n_B)` with the Welch–Satterthwaite degrees of
/// freedom (the spread a new seed brings). Over (seed, question) pairs: the exact McNemar test
/// on the saved final models' greedy answers, `p = min(1, 2·P[Bin(n₁₀ + n₀₁, ½) ≤ min(n₁₀, n₀₁)])`
/// with `n₁₀` the pairs A answers right and B wrong (arms of one seed share the task order and
/// the LoRA initialisation, and every run answers the same questions; it holds the trained
/// models fixed, so it says whether these models differ, not whether another seed would).
pub fn paired(results: &Results) -> String {
    let Some(((first, base), rest)) = results.split_first().map(|(f, r)| ((f.0, &f.1), r)) else {
        return String::new();
    };
    let mut text = format!(
        "\nEach arm against {first}: the difference of mean final accuracy ({first} − arm), \
         Welch's t over seeds, and the exact McNemar test over (seed, question) pairs of the \
         saved final models' answers (held-out accuracy of those answers in brackets).\n\n\
         | arm | {first} − arm | Welch t (df) | p, seeds | {first} right & arm wrong / \
         wrong & right | p, McNemar |\n|---|---|---|---|---|---|\n"
    );
    let finals = |runs: &[Finished]| {
        runs.iter()
            .map(Finished::final_accuracy)
            .collect::<Vec<_>>()
    };
    let answered = |runs: &[Finished]| {
        let all: Vec<bool> = runs
            .iter()
            .flat_map(|r| r.outcomes.iter().copied())
            .collect();
        all.iter().filter(|&&o| o).count() as f64 / all.len().max(1) as f64
    };
    let a = finals(base);
    for (label, runs) in rest {
        let b = finals(runs);
        let (t, df, p) = welch(&a, &b);
        let (mut right_wrong, mut wrong_right) = (0u64, 0u64);
        for (x, y) in base.iter().zip(runs) {
            for (&p, &q) in x.outcomes.iter().zip(&y.outcomes) {
                right_wrong += u64::from(p && !q);
                wrong_right += u64::from(!p && q);
            }
        }
        text += &format!(
            "| {label} | {:+.3} ({:.2} vs {:.2}) | {t:.2} ({df:.1}) | {p:.3} | {right_wrong} / {wrong_right} | {:.3} |\n",
            mean_sd(&a).0 - mean_sd(&b).0,
            answered(base),
            answered(runs),
            mcnemar(right_wrong, wrong_right),
        );
    }
    text
}

/// The diagnostics of each run at step 0 (before any update: the same for every arm of a seed
/// that starts alike) and over its last three steps, per seed, with the mean ± sd over seeds and
/// Welch's t of each arm's last-steps values against the first arm's: for telling a working run
/// from a failing one by what it logs.
pub fn diagnostics(results: &Results) -> String {
    type Metric = fn(&opd_trainers::StepMetrics) -> Option<f64>;
    let metrics: [(&str, Metric); 4] = [
        ("shared mass, teacher", |m| m.shared_mass_teacher),
        ("top-k overlap", |m| m.topk_overlap),
        ("teacher entropy", |m| m.teacher_entropy),
        ("student entropy", |m| Some(m.entropy)),
    ];
    let Some((first, base)) = results.first() else {
        return String::new();
    };
    let mut text = format!(
        "\nThe diagnostics at step 0 and over each run's last three steps (per seed; mean ± sd \
         over seeds), and Welch's t of the last steps against {first}.\n\n\
         | diagnostic | arm | step 0 (per seed) | last 3 steps (per seed) | mean ± sd | Welch t (df), p |\n\
         |---|---|---|---|---|---|\n"
    );
    let ends = |runs: &[Finished], f: Metric| -> Option<(Vec<f64>, Vec<f64>)> {
        let all: Vec<Vec<f64>> = runs.iter().map(|r| series(r, f)).collect();
        if all.iter().any(Vec::is_empty) {
            return None;
        }
        let start = all.iter().map(|s| s[0]).collect();
        let end = all.iter().map(|s| edges(s).1).collect();
        Some((start, end))
    };
    let list = |values: &[f64]| {
        values
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, f) in metrics {
        let Some((_, base_end)) = ends(base, f) else {
            continue;
        };
        for (label, runs) in results {
            let Some((start, end)) = ends(runs, f) else {
                continue;
            };
            let (mean, sd) = mean_sd(&end);
            let test = match label == first {
                true => "–".to_string(),
                false => {
                    let (t, df, p) = welch(&base_end, &end);
                    format!("{t:.2} ({df:.1}), {p:.3}")
                }
            };
            text += &format!(
                "| {name} | {label} | {} | {} | {mean:.3} ± {sd:.3} | {test} |\n",
                list(&start),
                list(&end)
            );
        }
    }
    text
}

/// Welch's t, its degrees of freedom and the two-sided p; p is 1 when both samples are constant
/// and equal, 0 when constant and different.
fn welch(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let ((ma, sa), (mb, sb)) = (mean_sd(a), mean_sd(b));
    let (va, vb) = (sa * sa / a.len() as f64, sb * sb / b.len() as f64);
    let se = (va + vb).sqrt();
    if se == 0.0 {
        return (f64::NAN, f64::NAN, if ma == mb { 1.0 } else { 0.0 });
    }
    let t = (ma - mb) / se;
    let df =
        (va + vb).powi(2) / (va * va / (a.len() as f64 - 1.0) + vb * vb / (b.len() as f64 - 1.0));
    let p = StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |d| 2.0 * (1.0 - d.cdf(t.abs())));
    (t, df, p)
}

/// The exact two-sided McNemar p of `n10` and `n01` discordant pairs.
fn mcnemar(n10: u64, n01: u64) -> f64 {
    use statrs::distribution::{Binomial, DiscreteCDF};
    let n = n10 + n01;
    if n == 0 {
        return 1.0;
    }
    Binomial::new(0.5, n).map_or(f64::NAN, |d| (2.0 * d.cdf(n10.min(n01))).min(1.0))
}
