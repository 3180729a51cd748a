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

/// Draws a chart's legend (the labelled series) at `position`.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", font_size))
        .draw()
        .map_err(err)
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
    legend(&mut chart, SeriesLabelPosition::MiddleRight, 16)?;
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
    legend(&mut chart, SeriesLabelPosition::MiddleRight, 16)?;
    root.present().map_err(err)
}

/// One part of a stacked bar.
pub struct Segment {
    /// Legend text (the same names, in the same order, in every bar).
    pub name: String,
    /// Its length.
    pub value: f64,
}

/// Horizontal stacked bars, one per labelled row, like the paper's
/// request-time breakdown: each bar is a whole, each colour one part of it.
pub fn stacked_bars(
    path: &Path,
    title: &str,
    x_label: &str,
    rows: &[(String, Vec<Segment>)],
) -> Result<(), String> {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    font()?;
    let x_max = rows
        .iter()
        .map(|(_, segs)| segs.iter().map(|s| s.value.max(0.0)).sum::<f64>())
        .fold(0.0f64, f64::max)
        * 1.6;
    let n = rows.len().max(1) as f64;
    let root = BitMapBackend::new(path, (1000, 160 + 110 * rows.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..x_max.max(1e-9), 0.0..n)
        .map_err(err)?;
    let names: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = (n - y - 0.5).round();
            if (n - y - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(x_label)
        .x_label_formatter(&|x| format!("{x:.2}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let parts = rows.first().map_or(0, |(_, s)| s.len());
    for p in 0..parts {
        let colour = PALETTE[p % PALETTE.len()];
        let mut rects = Vec::new();
        for (r, (_, segs)) in rows.iter().enumerate() {
            let start: f64 = segs[..p].iter().map(|s| s.value.max(0.0)).sum();
            let end = start + segs.get(p).map_or(0.0, |s| s.value.max(0.0));
            let top = n - r as f64 - 0.2;
            rects.push(Rectangle::new(
                [(start, top), (end, top - 0.6)],
                colour.filled(),
            ));
        }
        let name = rows[0].1.get(p).map_or(String::new(), |s| s.name.clone());
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled()));
    }
    chart
        .draw_series(rows.iter().enumerate().map(|(r, (_, segs))| {
            let total: f64 = segs.iter().map(|s| s.value.max(0.0)).sum();
            Text::new(
                format!("{total:.3}"),
                (total + x_max * 0.01, n - r as f64 - 0.45),
                ("sans-serif", 15),
            )
        }))
        .map_err(err)?;
    legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
    root.present().map_err(err)
}

/// One chart of a figure with several side by side (see [`log_log_panels`]).
pub struct Panel {
    /// The chart's title.
    pub title: String,
    /// X axis text.
    pub x_label: String,
    /// Y axis text.
    pub y_label: String,
    /// Measured lines, solid with a marker at each point.
    pub series: Vec<Series>,
    /// Reference lines (an ideal, a bound), dashed without markers.
    pub reference: Vec<Series>,
    /// Where the legend goes (a corner the lines leave free).
    pub legend: SeriesLabelPosition,
}

/// A tick label short enough for any magnitude.
fn tick(v: f64) -> String {
    if v >= 100.0 || (v >= 1.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Several log-log line charts side by side in one PNG, one per panel,
/// under a common title: for figures whose halves have different axes
/// (e.g. completion time against real workers, throughput against
/// simulated ones).
pub fn log_log_panels(path: &Path, title: &str, panels: &[Panel]) -> Result<(), String> {
    font()?;
    let width = 800 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 28)).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let points = || {
            panel
                .series
                .iter()
                .chain(&panel.reference)
                .flat_map(|s| s.points.iter().copied())
        };
        // Only positive, finite values can go on log axes; an empty panel
        // gets a nominal range (an infinite one would never finish drawing).
        let range = |values: Vec<f64>| {
            let usable = values.into_iter().filter(|v| v.is_finite() && *v > 0.0);
            let (lo, hi) = usable.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            if lo.is_finite() {
                (lo, hi)
            } else {
                (1.0, 10.0)
            }
        };
        let (x_min, x_max) = range(points().map(|p| p.0).collect());
        // Ticks at the measured x values only (1, 2, 4, 8 workers), not at
        // every integer of each decade.
        let mut x_ticks: Vec<f64> = points()
            .map(|p| p.0)
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        x_ticks.sort_by(f64::total_cmp);
        x_ticks.dedup();
        let (y_min, y_max) = range(points().map(|p| p.1).collect());
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(
                (x_min / 1.3..x_max * 1.3)
                    .log_scale()
                    .with_key_points(x_ticks),
                (y_min / 2.0..y_max * 2.0).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (i, s) in panel.series.iter().enumerate() {
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
        for (i, s) in panel.reference.iter().enumerate() {
            let colour = COLOURS[(panel.series.len() + i) % COLOURS.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    s.points.clone(),
                    8,
                    6,
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(1))
                });
        }
        legend(&mut chart, panel.legend.clone(), 16)?;
    }
    root.present().map_err(err)
}

/// One chart of a [`bar_panels`] figure: for each group, one bar per
/// variant of the figure.
pub struct BarPanel {
    /// The chart's title.
    pub title: String,
    /// Lines of text under the title, inside the chart (may be empty).
    pub notes: Vec<String>,
    /// Y axis text.
    pub y_label: String,
    /// A logarithmic y axis (for values spanning decades; all must be > 0).
    pub log_y: bool,
    /// The groups' names, shown above each group's bars (may be empty text).
    pub groups: Vec<String>,
    /// `values[group][variant]`; `None` draws no bar there.
    pub values: Vec<Vec<Option<f64>>>,
}

/// A bar's label: few digits at any magnitude.
fn bar_label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick on an axis that reaches `top`: as many decimals as its
/// scale needs, no more.
fn axis_label(v: f64, top: f64) -> String {
    match top {
        t if t >= 50.0 => format!("{v:.0}"),
        t if t >= 5.0 => format!("{v:.1}"),
        t if t >= 0.5 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// Several bar charts in a grid of `columns` columns in one PNG, under a
/// common title, with one legend of the `variants` (the same in every
/// panel) along the bottom: for comparisons whose measures have different
/// units (latency, throughput, time). A log-scale panel draws its bars on a
/// log10 axis whose ticks are whole decades.
pub fn bar_panels(
    path: &Path,
    title: &str,
    variants: &[String],
    panels: &[BarPanel],
    columns: usize,
) -> Result<(), String> {
    font()?;
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (540 * columns as u32, 450 * rows as u32 + 110);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 28)).map_err(err)?;
    let (grid, legend) = root.split_vertically(size.1 - 110);
    let areas = grid.split_evenly((rows, columns));
    let width = 1.0 / (variants.len() as f64 + 1.0);
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let values = panel.values.iter().flatten().flatten().copied();
        let top = values.clone().fold(0.0f64, f64::max).max(1e-9);
        let bottom = values.fold(f64::INFINITY, f64::min).min(top).max(1e-9);
        // Bars are drawn in axis units: the value, or its log10.
        let (y_lo, y_hi, to_axis): (f64, f64, fn(f64) -> f64) = if panel.log_y {
            let lo = (bottom.log10() - 0.3).floor();
            let hi = top.log10().ceil().max(lo + 1.0);
            (lo, hi + (hi - lo) * 0.3, f64::log10)
        } else {
            (0.0, top * 1.4, |v| v)
        };
        let span = y_hi - y_lo;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(10)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..panel.groups.len().max(1) as f64, y_lo..y_hi)
            .map_err(err)?;
        let log_y = panel.log_y;
        let decades = (span / 1.3).round() as usize + 1;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .x_labels(0)
            .y_desc(panel.y_label.as_str())
            .label_style(("sans-serif", 14));
        let format = |y: &f64| {
            if log_y {
                let decimals = (-y.round()).max(0.0) as usize;
                format!("{:.decimals$}", 10f64.powf(*y))
            } else {
                axis_label(*y, top)
            }
        };
        if log_y {
            mesh.y_labels(decades + 1);
        }
        mesh.y_label_formatter(&format).draw().map_err(err)?;
        for v in 0..variants.len() {
            let colour = COLOURS[v % COLOURS.len()];
            let bars: Vec<(f64, f64)> = panel
                .values
                .iter()
                .enumerate()
                .filter_map(|(g, vals)| {
                    let y = vals.get(v).copied().flatten()?;
                    Some((g as f64 + width * (v as f64 + 0.5), y))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, y)| {
                    Rectangle::new(
                        [(*x, y_lo), (*x + width * 0.9, to_axis(*y))],
                        colour.filled(),
                    )
                }))
                .map_err(err)?;
            chart
                .draw_series(bars.iter().map(|(x, y)| {
                    Text::new(
                        bar_label(*y),
                        (*x, to_axis(*y) + span * 0.02),
                        ("sans-serif", 13),
                    )
                }))
                .map_err(err)?;
        }
        chart
            .draw_series(panel.groups.iter().enumerate().map(|(g, name)| {
                Text::new(
                    name.clone(),
                    (g as f64 + width * 0.5, y_lo + span * 0.82),
                    ("sans-serif", 15),
                )
            }))
            .map_err(err)?;
        let left = 0.02 * panel.groups.len().max(1) as f64;
        chart
            .draw_series(panel.notes.iter().enumerate().map(|(i, line)| {
                Text::new(
                    line.clone(),
                    (left, y_hi - span * (0.02 + 0.06 * i as f64)),
                    ("sans-serif", 14),
                )
            }))
            .map_err(err)?;
    }
    let step = (size.0 as i32 - 40) / variants.len().max(1) as i32;
    for (v, name) in variants.iter().enumerate() {
        let colour = COLOURS[v % COLOURS.len()];
        let x = 20 + step * v as i32;
        legend
            .draw(&Rectangle::new([(x, 40), (x + 22, 58)], colour.filled()))
            .map_err(err)?;
        legend
            .draw(&Text::new(name.clone(), (x + 30, 40), ("sans-serif", 18)))
            .map_err(err)?;
    }
    root.present().map_err(err)
}
