//! PNG charts for the benchmark results (plotters, bitmap backend).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Where the text font comes from (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!("{FONT}: {e} (install Debian's fonts-dejavu-core for the plots)")
        })?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT}: not a font plotters can use"))
    })
    .clone()
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// A log-log line chart (base-2 x axis), like the paper's batching figure.
pub fn log_log_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    font()?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let x_max = xs.fold(1.0f64, f64::max);
    let y_min = ys.iter().copied().fold(f64::INFINITY, f64::min).max(1e-6);
    let y_max = ys.iter().copied().fold(0.0f64, f64::max);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (1.0..x_max * 1.2).log_scale(),
            (y_min / 2.0..y_max * 2.0).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Grouped bars: for each group (servable), one bar per variant (memo off,
/// memo on), each labelled with its value, the group's name above them.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    variants: &[String],
    values: &[Vec<f64>],
) -> Result<(), String> {
    font()?;
    let y_max = values.iter().flatten().copied().fold(0.0f64, f64::max) * 1.35;
    let width = 1.0 / (variants.len() as f64 + 1.0);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(20)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..groups.len() as f64, 0.0..y_max.max(1e-9))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .y_desc(y_label)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (v, name) in variants.iter().enumerate() {
        let colour = COLOURS[v % COLOURS.len()];
        let bars: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(g, vals)| (g as f64 + width * (v as f64 + 0.5), vals[v]))
            .collect();
        chart
            .draw_series(
                bars.iter().map(|(x, y)| {
                    Rectangle::new([(*x, 0.0), (*x + width * 0.9, *y)], colour.filled())
                }),
            )
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled()));
        chart
            .draw_series(bars.iter().map(|(x, y)| {
                Text::new(
                    format!("{y:.2}"),
                    (*x, *y + y_max * 0.02),
                    ("sans-serif", 14),
                )
            }))
            .map_err(err)?;
    }
    chart
        .draw_series(groups.iter().enumerate().map(|(g, name)| {
            let top = values[g].iter().copied().fold(0.0f64, f64::max);
            Text::new(
                name.clone(),
                (g as f64 + width * 0.5, top + y_max * 0.09),
                ("sans-serif", 17),
            )
        }))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
