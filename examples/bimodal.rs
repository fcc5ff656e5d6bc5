//! Forward KL covers, reverse KL seeks: fit a one-peaked student to a two-peaked teacher.
//!
//! The teacher is a mixture of two bumps on a grid of 201 outcomes. The student is a single
//! discretized Gaussian with a learnable centre and width. Minimizing each divergence by
//! gradient descent gives the picture of the seed post: forward KL `KL(p_T‖p_S)` stretches
//! the student over both peaks (mode covering), reverse KL `KL(p_S‖p_T)` locks it onto one
//! (mode seeking). JSD_0.5 has both kinds of solution as local minima; which one gradient
//! descent reaches depends on where the student starts.
//!
//! `cargo run --release --example bimodal [-- OUTPUT.png]` prints the fits and writes a plot
//! (default `bimodal.png`).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, activation::softmax};
use opd_divergences::{Divergence, DivergenceOptions, TeacherTarget, divergence};
use plotters::prelude::*;

type B = Autodiff<Flex>;

const GRID: usize = 201;
const STEPS: usize = 3000;
const LEARNING_RATE: f64 = 0.05;
/// The student starts just right of the centre, narrower than the teacher's spread.
const START_MU: f32 = 0.5;
const START_SIGMA: f32 = 0.5;

/// The outcomes `x_i`, evenly spaced on [−6, 6].
fn grid() -> Vec<f32> {
    (0..GRID)
        .map(|i| -6.0 + 12.0 * i as f32 / (GRID - 1) as f32)
        .collect()
}

/// Logits of a discretized Gaussian: `−(x − μ)² / (2σ²)`, `σ = exp(log_sigma)`.
fn gaussian_logits(x: &Tensor<B, 1>, mu: Tensor<B, 1>, log_sigma: Tensor<B, 1>) -> Tensor<B, 2> {
    let var = log_sigma.mul_scalar(2.0).exp();
    (x.clone() - mu)
        .powi_scalar(2)
        .div(var.mul_scalar(2.0))
        .neg()
        .unsqueeze()
}

/// The teacher: 0.5·N(−2.5, 0.6²) + 0.5·N(2.5, 0.6²), as log-probability logits.
fn teacher_logits(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&x| {
            let bump = |m: f32| (-(x - m).powi(2) / (2.0 * 0.36)).exp();
            (0.5 * bump(-2.5) + 0.5 * bump(2.5)).max(1e-30).ln()
        })
        .collect()
}

struct Fit {
    name: &'static str,
    mu: f32,
    sigma: f32,
    value: f32,
    probs: Vec<f32>,
}

/// Gradient descent on `(μ, log σ)` for `divergence(teacher ‖ student)`.
fn fit(name: &'static str, d: Divergence, x: &[f32], teacher: &[f32]) -> Fit {
    let device = Default::default();
    let xs = Tensor::<B, 1>::from_floats(x, &device);
    let teacher = Tensor::<B, 1>::from_floats(teacher, &device).unsqueeze::<2>();
    let mut mu = Tensor::<B, 1>::from_floats([START_MU], &device);
    let mut log_sigma = Tensor::<B, 1>::from_floats([START_SIGMA.ln()], &device);
    let options = DivergenceOptions::new(d);
    let mut value = 0.0;
    for _ in 0..STEPS {
        let (m, s) = (mu.clone().require_grad(), log_sigma.clone().require_grad());
        let student = gaussian_logits(&xs, m.clone(), s.clone());
        let loss = divergence(student, TeacherTarget::Logits(teacher.clone()), options)
            .expect("valid inputs")
            .sum();
        value = loss.clone().into_scalar();
        let grads = loss.backward();
        let step = |p: Tensor<B, 1>| {
            let grad = p.grad(&grads).expect("a parameter of the loss");
            Tensor::from_inner(p.inner() - grad.mul_scalar(LEARNING_RATE))
        };
        mu = step(m);
        log_sigma = step(s);
    }
    let probs = softmax(gaussian_logits(&xs, mu.clone(), log_sigma.clone()), 1);
    Fit {
        name,
        mu: mu.into_scalar(),
        sigma: log_sigma.exp().into_scalar(),
        value,
        probs: probs.into_data().to_vec().unwrap(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bimodal.png".into());
    let x = grid();
    let teacher = teacher_logits(&x);
    let teacher_probs: Vec<f32> = {
        let z: f32 = teacher.iter().map(|l| l.exp()).sum();
        teacher.iter().map(|l| l.exp() / z).collect()
    };
    let fits = [
        fit("forward KL", Divergence::ForwardKl, &x, &teacher),
        fit("reverse KL", Divergence::ReverseKl, &x, &teacher),
        fit("JSD(0.5)", Divergence::Jsd { beta: 0.5 }, &x, &teacher),
    ];
    println!("teacher: two peaks at x = -2.5 and x = +2.5 (σ = 0.6 each)");
    println!(
        "student: one Gaussian, started at μ = {START_MU}, σ = {START_SIGMA}; {STEPS} steps of gradient descent\n"
    );
    println!(
        "{:<12} {:>8} {:>8} {:>10} {:>10} {:>10}  behaviour",
        "divergence", "μ", "σ", "final D", "mass x<0", "mass x>0"
    );
    for f in &fits {
        let left: f32 = f
            .probs
            .iter()
            .zip(&x)
            .filter(|(_, x)| **x < 0.0)
            .map(|(p, _)| p)
            .sum();
        let behaviour = if left.min(1.0 - left) < 0.05 {
            "locks onto one peak (mode seeking)"
        } else {
            "spreads over both peaks (mode covering)"
        };
        println!(
            "{:<12} {:>8.3} {:>8.3} {:>10.4} {:>10.3} {:>10.3}  {behaviour}",
            f.name,
            f.mu,
            f.sigma,
            f.value,
            left,
            1.0 - left
        );
    }
    plot(&out, &x, &teacher_probs, &fits)?;
    println!("plot written to {out}");
    Ok(())
}

fn plot(
    path: &str,
    x: &[f32],
    teacher: &[f32],
    fits: &[Fit],
) -> Result<(), Box<dyn std::error::Error>> {
    let with_text = opd_cli::plot::register_system_font();
    if !with_text {
        eprintln!("no TrueType font found: the plot is drawn without text");
    }
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = fits
        .iter()
        .flat_map(|f| f.probs.iter())
        .chain(teacher)
        .cloned()
        .fold(0.0f32, f32::max);
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55);
    if with_text {
        builder.caption("two-peaked teacher, one-peaked student", ("sans-serif", 24));
    }
    let mut chart = builder.build_cartesian_2d(-6f32..6f32, 0f32..top * 1.1)?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("outcome x").y_desc("probability");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let series = [(BLACK, teacher)].into_iter().chain(
        [RED, BLUE, GREEN]
            .into_iter()
            .zip(fits.iter().map(|f| f.probs.as_slice())),
    );
    let names = ["teacher"].into_iter().chain(fits.iter().map(|f| f.name));
    for ((color, probs), name) in series.zip(names) {
        let line = chart.draw_series(LineSeries::new(
            x.iter().cloned().zip(probs.iter().cloned()),
            color.stroke_width(3),
        ))?;
        if with_text {
            line.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
    }
    if with_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
