//! Charts of the app-switch report: hot-start ratio per policy and resume / cold-start
//! latency distributions, as PNG (bitmap backend) and SVG.
//!
//! Text is drawn with `ab_glyph` from a TrueType font found at run time (DejaVu Sans or
//! Liberation Sans, Debian's `fonts-dejavu-core` / `fonts-liberation`), so building needs
//! no fontconfig or freetype development packages.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Policy, Report};

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONTS
            .iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| {
                format!("no TrueType font found (looked at {FONTS:?}); install fonts-dejavu-core")
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // The font registry wants 'static bytes: one font, leaked once per process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x77, 0x77, 0x77),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn color(name: &str) -> RGBColor {
    Policy::ALL
        .iter()
        .position(|p| p.name() == name)
        .map_or(BLACK, |i| COLORS[i])
}

fn ordered(report: &Report) -> Vec<&str> {
    Policy::ALL
        .iter()
        .map(|p| p.name())
        .filter(|n| report.policies.contains_key(*n))
        .collect()
}

type DrawResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw_hot<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let names = ordered(report);
    let n = names.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "Hot starts per switch (solid: from RAM, light: from swap): {} apps x {} MiB, budget {} MiB",
                report.config.apps,
                report.config.app_mib,
                report.config.budget_bytes >> 20
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(10)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.15f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("fraction of switches")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, name) in names.iter().enumerate() {
        let r = &report.policies[*name];
        let x0 = i as f64 + 0.15;
        let x1 = i as f64 + 0.85;
        let sw = r.switches.max(1) as f64;
        let ram = r.hot_from_ram as f64 / sw;
        let swap = r.hot_from_swap as f64 / sw;
        let c = color(name);
        chart
            .draw_series([
                Rectangle::new([(x0, 0.0), (x1, ram)], c.filled()),
                Rectangle::new([(x0, ram), (x1, ram + swap)], c.mix(0.45).filled()),
            ])
            .map_err(err)?;
        chart
            .draw_series([Text::new(
                format!("{name}: {:.2}", r.hot_start_ratio),
                (i as f64 + 0.2, ram + swap + 0.06),
                ("sans-serif", 16),
            )])
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn draw_latency<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    report: &Report,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let names = ordered(report);
    let all = names.iter().flat_map(|n| {
        let r = &report.policies[*n];
        r.resume_ms.iter().chain(r.cold_start_ms.iter()).copied()
    });
    let max = all.fold(1.0f64, f64::max) * 1.3;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Resume (thick) and cold-start (dots) latency, CDF per policy",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0.5f64..max).log_scale(), 0f64..1.0f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for name in &names {
        let r = &report.policies[*name];
        let c = color(name);
        let cdf = |v: &[f64]| -> Vec<(f64, f64)> {
            let n = v.len() as f64;
            v.iter()
                .enumerate()
                .flat_map(|(i, &x)| [(x.max(0.5), i as f64 / n), (x.max(0.5), (i + 1) as f64 / n)])
                .collect()
        };
        if !r.resume_ms.is_empty() {
            chart
                .draw_series(LineSeries::new(cdf(&r.resume_ms), c.stroke_width(2)))
                .map_err(err)?
                .label(format!("{name} resume (n={})", r.resume_ms.len()))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        if !r.cold_start_ms.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    cdf(&r.cold_start_ms),
                    c.mix(0.6).stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .draw_series(PointSeries::of_element(
                    r.cold_start_ms
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| (x.max(0.5), (i + 1) as f64 / r.cold_start_ms.len() as f64)),
                    3,
                    c,
                    &|p, s, st| Circle::new(p, s, st.filled()),
                ))
                .map_err(err)?
                .label(format!("{name} cold start (n={})", r.cold_start_ms.len()))
                .legend(move |(x, y)| Circle::new((x + 9, y), 3, c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Write `app-switch-hot.{png,svg}` and `app-switch-latency.{png,svg}` into `dir`.
pub(super) fn write_charts(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, String> {
    register_font()?;
    let mut out = Vec::new();
    let size = (900, 560);
    macro_rules! both {
        ($stem:expr, $draw:ident) => {{
            let p = dir.join(format!("{}.png", $stem));
            {
                let root = BitMapBackend::new(&p, size).into_drawing_area();
                $draw(&root, report).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            out.push(p);
            let p = dir.join(format!("{}.svg", $stem));
            {
                let root = SVGBackend::new(&p, size).into_drawing_area();
                $draw(&root, report).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            out.push(p);
        }};
    }
    both!("app-switch-hot", draw_hot);
    both!("app-switch-latency", draw_latency);
    Ok(out)
}
