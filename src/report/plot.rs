//! `qlstm plot`: the paper's two diagnostic figures from the runs' CSV traces, side by side —
//! λ1 against training step (log scale; the rebuttal's figure) and ‖∂ξ/∂h_t‖ against t within
//! a window (log scale; the paper's gradient figure), one line per run. SVG, or PNG when the
//! output name ends in .png.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bail;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::run_dir::RunDir;

/// One run's traces: λ1 by step (layer 0) and the gradient norms by t at one recorded step
/// (layer 0).
struct Traces {
    name: String,
    lambda: Vec<(f64, f64)>,
    grad_step: u64,
    grad: Vec<(f64, f64)>,
}

/// `grad_step`: show the gradient trace recorded nearest this optimizer step (None: the last).
fn load(dir: &Path, grad_step: Option<u64>) -> Result<Traces> {
    let run = RunDir::at(dir);
    if !run.file(RunDir::LAMBDA).exists() || !run.file(RunDir::GRAD_NORM).exists() {
        bail!(
            "{}: no lambda.csv/grad_norm.csv; is it a run directory (with diagnostics.enabled = true)?",
            dir.display()
        );
    }
    let rows = run.read_lambda()?;
    let gru = rows.first().is_some_and(|r| r.cell == crate::nn::CellKind::Gru);
    let lambda = rows.iter().filter(|r| r.layer == 0).map(|r| (r.step as f64, r.lambda1)).collect();
    let mut by_step: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for r in run.read_grad_norms()?.iter().filter(|r| r.layer == 0) {
        by_step.entry(r.step).or_default().push((r.t as f64, r.grad_norm));
    }
    let chosen = match grad_step {
        Some(want) => by_step.keys().copied().min_by_key(|&s| s.abs_diff(want)),
        None => by_step.keys().copied().next_back(),
    };
    let (grad_step, grad) = chosen.and_then(|s| by_step.remove_entry(&s)).unwrap_or((0, Vec::new()));
    // GRU runs say so: their λ1 is the bound of docs/SPEC.md §6, not §5's
    let name = if gru { format!("{} (GRU)", run.name()) } else { run.name() };
    Ok(Traces { name, lambda, grad_step, grad })
}

/// Positive, finite points only (log axes).
fn loggable(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points.iter().copied().filter(|(_, y)| y.is_finite() && *y > 0.0).collect()
}

fn y_range(series: &[Vec<(f64, f64)>]) -> std::ops::Range<f64> {
    let ys = series.iter().flatten().map(|p| p.1);
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if lo.is_finite() { lo / 2.0..hi * 2.0 } else { 0.1..10.0 }
}

fn x_max(series: &[Vec<(f64, f64)>]) -> f64 {
    series.iter().flatten().map(|p| p.0).fold(1.0, f64::max)
}

/// Register a TrueType font for text (plotters' ab_glyph backend has no built-in font).
fn register_font() -> Result<()> {
    let candidates = [
        std::env::var("QLSTM_FONT").unwrap_or_default(),
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf".into(),
    ];
    for c in candidates.iter().filter(|c| !c.is_empty()) {
        if let Ok(bytes) = std::fs::read(c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("qlstm plot needs a TrueType font: install Debian's fonts-dejavu-core or set QLSTM_FONT=/path/to/font.ttf")
}

/// Draw the λ1 and gradient-norm panels of `dirs` into `out` (.svg or .png); the gradient
/// panel shows each run's trace recorded nearest `grad_step` (None: its last).
pub fn plot(dirs: &[PathBuf], out: &Path, grad_step: Option<u64>) -> Result<()> {
    if dirs.is_empty() {
        bail!("qlstm plot: name at least one run directory");
    }
    let ext = out.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if ext != "svg" && ext != "png" {
        bail!(
            "--out {}: qlstm plot writes .svg or .png files{}",
            out.display(),
            if ext.is_empty() { String::new() } else { format!(", not .{ext}") }
        );
    }
    let runs = dirs.iter().map(|d| load(d, grad_step)).collect::<Result<Vec<_>>>()?;
    register_font()?;
    let size = (1400, 560);
    let png = ext == "png";
    if png {
        let tmp = out.with_extension(format!("tmp-{}.png", std::process::id()));
        {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root, &runs).map_err(|e| Error::new(format!("{}: {e}", out.display())))?;
            root.present().map_err(|e| Error::new(format!("{}: {e}", out.display())))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| crate::error::io_err(out, e))?;
    } else {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            draw(&root, &runs).map_err(|e| Error::new(format!("{}: {e}", out.display())))?;
            root.present().map_err(|e| Error::new(format!("{}: {e}", out.display())))?;
        }
        write_atomic(out, svg.as_bytes())?;
    }
    Ok(())
}

/// Log-axis labels at the powers of ten only, written as a reader expects them: 0.01, 0.1, 1,
/// 10, 100, 1000, and 10^k (as 1e5, 1e-4) beyond; the ticks between stay unlabelled.
fn log_label(y: &f64) -> String {
    let k = y.log10().round();
    if (y.log10() - k).abs() > 1e-6 {
        return String::new();
    }
    match k as i32 {
        -3..=-1 => format!("{:.*}", (-k) as usize, y),
        0..=4 => format!("{:.0}", y),
        k => format!("1e{k}"),
    }
}

/// Steps and time indices are whole numbers.
fn integer_label(x: &f64) -> String {
    format!("{x:.0}")
}

/// One chart with a log y axis, a line and a legend entry per (label, points).
fn log_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let points: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, p)| p.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max(&points), y_range(&points).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&log_label)
        .x_label_formatter(&integer_label)
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).mix(0.9);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        // A run that diverged at its first step has one λ row: a line through one point draws
        // nothing, so mark it.
        if pts.len() == 1 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, plotters::coord::Shift>, runs: &[Traces]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let lambdas: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| loggable(&r.lambda)).collect();
    let grads: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| loggable(&r.grad)).collect();

    let lambda_series = runs.iter().zip(lambdas).map(|(r, pts)| (r.name.clone(), pts)).collect::<Vec<_>>();
    log_chart(&left, "λ1 (layer 0) during training", "optimizer step", "λ1", &lambda_series)?;
    let grad_series =
        runs.iter().zip(grads).map(|(r, pts)| (format!("{} (step {})", r.name, r.grad_step), pts)).collect::<Vec<_>>();
    log_chart(
        &right,
        "‖∂ξ/∂h_t‖ within a window (layer 0)",
        "t (time step in the window)",
        "gradient norm",
        &grad_series,
    )?;
    Ok(())
}
