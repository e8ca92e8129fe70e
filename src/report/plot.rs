//! `qlstm plot`: the paper's two diagnostic figures from the runs' CSV traces, side by side —
//! λ1 against training step (log scale; the rebuttal's figure) and ‖∂ξ/∂h_t‖ against t within
//! a window (log scale; the paper's gradient figure), one line per run; or, with `--curves`,
//! each run's validation metric per epoch with the paper's published number for its cell as a
//! mark (how far a short run is from the paper's end point). SVG, or PNG when the output name
//! ends in .png.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bail;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::run_dir::{Metric, RunDir};

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
    let png = check_output(dirs, out)?;
    let runs = dirs.iter().map(|d| load(d, grad_step)).collect::<Result<Vec<_>>>()?;
    render(out, png, (1400, 560), runs.as_slice())
}

/// The one figure of `--curves`: validation metric per epoch, one line per run, and a mark at
/// the paper's number for the run's cell where it published one.
pub fn curves(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let png = check_output(dirs, out)?;
    let runs = dirs.iter().map(|d| load_curve(d)).collect::<Result<Vec<_>>>()?;
    let metric = runs[0].metric;
    if let Some(other) = runs.iter().find(|r| r.metric != metric) {
        bail!(
            "qlstm plot --curves: {} measures {}, {} measures {}: one figure draws one metric",
            runs[0].name,
            metric.name(),
            other.name,
            other.metric.name()
        );
    }
    render(out, png, (1000, 640), runs.as_slice())
}

/// A figure that draws on any plotters backend (SVG or PNG).
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

impl Figure for [Traces] {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        draw(root, self)
    }
}

impl Figure for [Curve] {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        draw_curves(root, self)
    }
}

/// At least one run, and an output name qlstm can write: true for PNG, false for SVG.
fn check_output(dirs: &[PathBuf], out: &Path) -> Result<bool> {
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
    Ok(ext == "png")
}

/// Draw into `out` atomically: PNG through a temporary file renamed into place, SVG through
/// `write_atomic`.
fn render<F: Figure + ?Sized>(out: &Path, png: bool, size: (u32, u32), figure: &F) -> Result<()> {
    register_font()?;
    let fail = |e: &dyn std::fmt::Display| Error::new(format!("{}: {e}", out.display()));
    if png {
        let tmp = out.with_extension(format!("tmp-{}.png", std::process::id()));
        {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            figure.draw(&root).map_err(|e| fail(&e))?;
            root.present().map_err(|e| fail(&e))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| crate::error::io_err(out, e))?;
    } else {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            figure.draw(&root).map_err(|e| fail(&e))?;
            root.present().map_err(|e| fail(&e))?;
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
    legend(&mut chart, SeriesLabelPosition::UpperRight)
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

/// One run's validation metric by epoch, and the paper's number for its cell.
struct Curve {
    name: String,
    metric: Metric,
    valid: Vec<(f64, f64)>,
    paper: Option<f64>,
}

fn load_curve(dir: &Path) -> Result<Curve> {
    let run = RunDir::at(dir);
    if !run.file(RunDir::METRICS).exists() || !run.file(RunDir::SPEC).exists() {
        bail!("{}: no metrics.csv/spec.toml; is it a run directory?", dir.display());
    }
    let spec = run.read_spec()?;
    let valid = run
        .read_metrics()?
        .iter()
        .map(|r| (r.epoch as f64, r.valid_metric))
        .filter(|(_, y)| y.is_finite() && *y > 0.0)
        .collect();
    Ok(Curve {
        name: run.name(),
        metric: Metric::for_task(spec.task),
        valid,
        paper: crate::report::table::published(&spec),
    })
}

/// Validation metric against epoch, a line per run; the paper's end point of each run's cell
/// (200 epochs for characters and MNIST, 120 for words: docs/SPEC.md §3) as a dashed level in
/// the run's colour, ending in a triangle at the right edge. A log y axis when the values span
/// more than a factor of 10 (perplexities of plain bc next to normalized ones).
fn draw_curves<DB: DrawingBackend>(root: &DrawingArea<DB, plotters::coord::Shift>, runs: &[Curve]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let metric = runs[0].metric;
    let ys: Vec<f64> = runs.iter().flat_map(|r| r.valid.iter().map(|p| p.1).chain(r.paper)).collect();
    let (lo, hi) = ys.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (1.0, 2.0) };
    let epochs = runs.iter().flat_map(|r| r.valid.iter().map(|p| p.0)).fold(1.0, f64::max);
    let x_end = epochs + 0.6;
    let caption =
        format!("validation {} per epoch; dashed: the paper's published test {}", metric.name(), metric.name());
    let mut chart = ChartBuilder::on(root);
    chart.caption(caption, ("sans-serif", 20)).margin(14).x_label_area_size(40).y_label_area_size(70);
    let pad = (hi - lo).max(hi * 0.02) * 0.08;
    let x_labels = epochs as usize + 1;
    if hi / lo > 10.0 {
        let mut c = chart.build_cartesian_2d(0.5..x_end, (lo / 1.15..hi * 1.15).log_scale())?;
        c.configure_mesh()
            .x_desc("epoch")
            .y_desc(metric.name())
            .x_labels(x_labels)
            .x_label_formatter(&whole_label)
            .y_label_formatter(&log_label)
            .draw()?;
        draw_curve_series(&mut c, runs, x_end)?;
        // top centre: learning curves start high on the left, the paper's marks end on the right
        legend(&mut c, SeriesLabelPosition::UpperMiddle)
    } else {
        let mut c = chart.build_cartesian_2d(0.5..x_end, (lo - pad)..(hi + pad))?;
        c.configure_mesh()
            .x_desc("epoch")
            .y_desc(metric.name())
            .x_labels(x_labels)
            .x_label_formatter(&whole_label)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()?;
        draw_curve_series(&mut c, runs, x_end)?;
        legend(&mut c, SeriesLabelPosition::UpperMiddle)
    }
}

/// Whole numbers only (epochs); ticks between them stay unlabelled.
fn whole_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 { format!("{x:.0}") } else { String::new() }
}

/// Distinct, dark enough on white (matplotlib's tab10), for up to ten runs, then plotters'.
fn run_color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (214, 39, 40),
        (44, 160, 44),
        (148, 103, 189),
        (255, 127, 14),
        (23, 190, 207),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
    ];
    match TAB10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

fn draw_curve_series<'a, DB: DrawingBackend + 'a, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    runs: &[Curve],
    x_end: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    for (i, r) in runs.iter().enumerate() {
        let color = run_color(i);
        let label = match r.paper {
            Some(p) => format!("{} (paper {p})", r.name),
            None => format!("{} (no published number)", r.name),
        };
        chart
            .draw_series(LineSeries::new(r.valid.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(r.valid.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        if let Some(p) = r.paper {
            chart.draw_series(DashedLineSeries::new([(0.5, p), (x_end - 0.15, p)], 6, 4, color.stroke_width(1)))?;
            chart.draw_series(std::iter::once(TriangleMarker::new((x_end - 0.15, p), 7, color.filled())))?;
        }
    }
    Ok(())
}

/// The series' legend, boxed, at `at`.
fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    at: SeriesLabelPosition,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart.configure_series_labels().position(at).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    Ok(())
}
