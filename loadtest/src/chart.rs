//! SVG charts (plotters, SVG backend: no fonts or native libraries needed).
//!
//! A sweep's figure: a two-line title (the scenario and every setting that
//! shapes the numbers, so two charts can be compared), then three panels
//! against the shard count: deliveries/s, p99 latency and server CPU per
//! delivery. A soak's figure ([`minutes_svg`]): the same title, then panels
//! against the minute, with the warm-up marked.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::format::{human, human_us};
use crate::scenario::sweep::{SweepReport, SweepRow};

/// Picks the figure a panel plots; `None` when it was not measured.
type Metric = fn(&SweepRow) -> Option<f64>;

/// Formats a panel's values (axis ticks and point labels).
type Format = fn(f64) -> String;

/// More tick labels than this crowd a 450 px wide panel.
const MAX_TICKS: usize = 12;

/// Figure size in pixels: three panels side by side under the title.
const SIZE: (u32, u32) = (1380, 480);

/// Height of the two title lines.
const TITLE_HEIGHT: u32 = 64;

/// Where the x axis puts the shard counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardAxis {
    /// Tick positions: whole shard counts only (a "1.5 shards" tick is
    /// meaningless).
    pub ticks: Vec<usize>,
    /// Logarithmic when the counts span a factor of 8 or more (the usual
    /// 1, 2, 4, 8, 16 sweep), so small counts are not squeezed together.
    pub log: bool,
    /// The plotted range, padded so the end points are not on the frame.
    pub range: Range<f64>,
}

/// The x axis as plotters sees it. A custom coordinate rather than
/// plotters' own `f64` range with fixed key points: that combination cannot
/// draw its mesh, and the light grid lines it would add fall between whole
/// shard counts.
impl Ranged for ShardAxis {
    type ValueType = f64;
    // The labels come from `x_label_formatter`; this only satisfies the
    // trait.
    type FormatOption = DefaultFormatting;

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let scale = |v: f64| {
            if self.log {
                v.max(f64::MIN_POSITIVE).ln()
            } else {
                v
            }
        };
        let (start, end) = (scale(self.range.start), scale(self.range.end));
        let fraction = (scale(*value) - start) / (end - start);
        limit.0 + (fraction * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        self.ticks.iter().map(|&t| t as f64).collect()
    }
}

/// Chooses the x axis for the swept shard counts: a tick at every count
/// swept, thinned out (to round steps or powers of two) when there are more
/// than `MAX_TICKS` (12).
pub fn shard_axis(shards: &[usize]) -> ShardAxis {
    let mut counts: Vec<usize> = shards.iter().copied().filter(|&s| s > 0).collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        counts.push(1);
    }
    let (min, max) = (counts[0], counts[counts.len() - 1]);
    let log = max >= 8 * min;
    let ticks = if counts.len() <= MAX_TICKS {
        counts
    } else if log {
        std::iter::successors(Some(1usize), |t| t.checked_mul(2))
            .skip_while(|&t| t < min)
            .take_while(|&t| t <= max)
            .collect()
    } else {
        let step = (max - min).div_ceil(MAX_TICKS - 1).max(1);
        (min..=max).step_by(step).collect()
    };
    let range = if log {
        // A constant factor is a constant distance on a log axis.
        (min as f64 / 1.3)..(max as f64 * 1.3)
    } else {
        (min as f64 - 0.5)..(max as f64 + 0.5)
    };
    ShardAxis { ticks, log, range }
}

/// Draws deliveries/s, p99 latency and server CPU per delivery against the
/// shard count.
pub fn sweep_svg(sweep: &SweepReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    title.draw_text(
        &format!("Cinder shard sweep: {}", sweep.scenario),
        &("sans-serif", 22).into_font().color(&BLACK),
        (16, 8),
    )?;
    title.draw_text(
        &sweep.parameters,
        &("sans-serif", 15).into_font().color(&RGBColor(80, 80, 80)),
        (16, 38),
    )?;
    let shards: Vec<usize> = sweep.rows.iter().map(|r| r.shards).collect();
    let axis = shard_axis(&shards);
    let deliveries: Metric = |r| Some(r.deliveries_per_sec);
    let p99: Metric = |r| Some(r.p99_us);
    let cpu: Metric = |r| r.server_cpu_per_delivery_us;
    let panels: [(&str, Metric, Format); 3] = [
        ("deliveries/s", deliveries, human),
        ("p99 latency", p99, human_us),
        ("server CPU per delivery", cpu, human_us),
    ];
    for (area, (name, metric, format)) in body.split_evenly((1, panels.len())).iter().zip(panels) {
        let points: Vec<(f64, f64)> = sweep
            .rows
            .iter()
            .filter_map(|r| Some((r.shards as f64, metric(r)?)))
            .collect();
        panel(area, axis.clone(), name, &points, format)?;
    }
    root.present()?;
    Ok(())
}

/// One panel of a chart over minutes.
#[derive(Debug, Clone)]
pub struct MinutePanel {
    /// Caption, e.g. `server RSS`.
    pub name: String,
    /// (minute, value) points; minutes not measured are left out.
    pub points: Vec<(f64, f64)>,
    /// Formats the axis values.
    pub format: fn(f64) -> String,
    /// A tolerance band (low, high) shaded over the minutes after the
    /// warm-up, e.g. the ±10 % a flat series must stay within.
    pub band: Option<(f64, f64)>,
    /// The y axis reaches at least this (so a series of zeros, e.g. lost
    /// messages, gets a readable axis).
    pub floor: f64,
    /// (minute, low, high): the range a value moved in within each minute,
    /// drawn as a vertical bar behind the line.
    pub spans: Vec<(f64, f64, f64)>,
}

/// Height of one row of minute panels.
const MINUTE_ROW_HEIGHT: u32 = 400;

/// Draws `panels`, two per row, against the minute (1 … `minutes`), with a
/// line where the `warmup` minutes end.
pub fn minutes_svg(
    title: &str,
    parameters: &str,
    minutes: u32,
    warmup: u32,
    panels: &[MinutePanel],
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = panels.len().div_ceil(2).max(1);
    let height = TITLE_HEIGHT + MINUTE_ROW_HEIGHT * rows as u32;
    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(TITLE_HEIGHT);
    head.draw_text(
        title,
        &("sans-serif", 22).into_font().color(&BLACK),
        (16, 8),
    )?;
    head.draw_text(
        parameters,
        &("sans-serif", 15).into_font().color(&RGBColor(80, 80, 80)),
        (16, 38),
    )?;
    for (area, panel) in body.split_evenly((rows, 2)).iter().zip(panels) {
        minute_panel(area, minutes.max(1), warmup, panel)?;
    }
    root.present()?;
    Ok(())
}

fn minute_panel<DB>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    minutes: u32,
    warmup: u32,
    panel: &MinutePanel,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let highest = panel
        .points
        .iter()
        .map(|p| p.1)
        .chain(panel.band.map(|b| b.1))
        .chain(panel.spans.iter().map(|s| s.2))
        .fold(panel.floor, f64::max);
    let top = highest.max(1e-9) * 1.2;
    let right = f64::from(minutes) + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.name, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..right, 0.0..top)?;
    // Only whole minutes get a label.
    let x_label = |x: &f64| {
        if (x - x.round()).abs() < 1e-6 {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    let format = panel.format;
    let y_label = |value: &f64| format(*value);
    chart
        .configure_mesh()
        .x_desc("minute")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .max_light_lines(1)
        .x_labels(minutes.min(15) as usize)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .y_labels(6)
        .draw()?;
    let grey = RGBColor(150, 150, 150);
    let judged_from = f64::from(warmup) + 0.5;
    if let Some((low, high)) = panel.band {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(judged_from.max(0.5), low), (right, high)],
            RGBColor(120, 200, 120).mix(0.2).filled(),
        )))?;
    }
    if warmup > 0 && warmup < minutes {
        chart.draw_series(LineSeries::new(
            [(judged_from, 0.0), (judged_from, top)],
            &grey,
        ))?;
        let style = ("sans-serif", 13).into_font().color(&grey);
        chart.draw_series(std::iter::once(Text::new(
            "warm-up",
            (judged_from - 0.4, top * 0.97),
            style.pos(Pos::new(HPos::Right, VPos::Top)),
        )))?;
    }
    if panel.points.is_empty() {
        let (w, h) = area.dim_in_pixel();
        area.draw_text(
            "n/a (not measured)",
            &("sans-serif", 16).into_font().color(&grey),
            (w as i32 / 2 - 60, h as i32 / 2),
        )?;
        return Ok(());
    }
    let span_colour = RGBColor(120, 160, 230);
    chart.draw_series(panel.spans.iter().map(|&(x, low, high)| {
        PathElement::new(vec![(x, low), (x, high)], span_colour.stroke_width(3))
    }))?;
    chart.draw_series(LineSeries::new(panel.points.iter().copied(), &BLUE))?;
    chart.draw_series(
        panel
            .points
            .iter()
            .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
    )?;
    Ok(())
}

/// One panel: a line through `points`, each value written above its point.
fn panel<DB>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    x: ShardAxis,
    name: &str,
    points: &[(f64, f64)],
    format: Format,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let top = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, RangedCoordf64::from(0.0..top))?;
    let x_label = |shards: &f64| format!("{}", shards.round() as u64);
    let y_label = |value: &f64| format(*value);
    chart
        .configure_mesh()
        .x_desc("shards")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .max_light_lines(2)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .y_labels(6)
        .draw()?;
    if points.is_empty() {
        // Nothing measured (e.g. /proc unreadable): say so instead of a
        // flat line at 0.
        let (w, h) = area.dim_in_pixel();
        area.draw_text(
            "n/a (not measured)",
            &("sans-serif", 16)
                .into_font()
                .color(&RGBColor(150, 150, 150)),
            (w as i32 / 2 - 60, h as i32 / 2),
        )?;
        return Ok(());
    }
    chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE))?;
    // Each value is written centred above its point: to the side it would
    // cross the line or, at the last point, run off the panel.
    let label_style = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(points.iter().map(|&(x, y)| {
        EmptyElement::at((x, y))
            + Circle::new((0, 0), 4, BLUE.filled())
            + Text::new(format(y), (0, -8), label_style.clone())
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_the_swept_whole_shard_counts() {
        let axis = shard_axis(&[1, 2]);
        assert_eq!(axis.ticks, vec![1, 2]);
        assert!(!axis.log);
        assert_eq!(axis.range, 0.5..2.5);
        assert_eq!(shard_axis(&[4, 1, 2, 2, 3]).ticks, vec![1, 2, 3, 4]);
        assert_eq!(shard_axis(&[]).ticks, vec![1]);
        assert_eq!(shard_axis(&[0, 3]).ticks, vec![3]);
    }

    /// Draws `rows` and returns the content of every `<text>` element.
    fn chart_texts(rows: Vec<SweepRow>) -> Vec<String> {
        let sweep = SweepReport {
            scenario: "fanout".into(),
            parameters: "1k conns · 1 topic · 64 B payload".into(),
            rows,
            runs: Vec::new(),
        };
        let path = std::env::temp_dir().join(format!(
            "cinder-chart-{}-{}.svg",
            std::process::id(),
            sweep.rows.len()
        ));
        sweep_svg(&sweep, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        svg.split("</text>")
            .filter_map(|chunk| Some(chunk.rsplit_once("<text")?.1.split_once('>')?.1.trim()))
            .map(str::to_string)
            .collect()
    }

    fn row(shards: usize, deliveries: f64, p99: f64, cpu: Option<f64>) -> SweepRow {
        SweepRow {
            shards,
            deliveries_per_sec: deliveries,
            p99_us: p99,
            server_cpu_per_delivery_us: cpu,
            ..SweepRow::default()
        }
    }

    #[test]
    fn the_svg_has_whole_ticks_readable_numbers_and_the_settings() {
        let texts = chart_texts(vec![
            row(1, 1_750_000.0, 2_400.0, Some(0.5)),
            row(2, 3_500_000.0, 1_800.0, Some(0.25)),
        ]);
        for expected in [
            "Cinder shard sweep: fanout",
            "1k conns · 1 topic · 64 B payload",
            "p99 latency",
            "server CPU per delivery",
            "3.5M",
            "2.4 ms",
            "0.5 µs",
            "1",
            "2",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "no {expected:?} in {texts:?}"
            );
        }
        for unexpected in ["1.5", "3500000", "3500000.0", "0.5", "2.5"] {
            assert!(
                !texts.iter().any(|t| t == unexpected),
                "{unexpected:?} in {texts:?}"
            );
        }
    }

    #[test]
    fn unmeasured_cpu_is_marked_not_drawn_at_zero() {
        let texts = chart_texts(vec![
            row(1, 1e6, 900.0, None),
            row(2, 2e6, 800.0, None),
            row(4, 3e6, 700.0, None),
        ]);
        assert!(texts.iter().any(|t| t == "n/a (not measured)"), "{texts:?}");
    }

    #[test]
    fn minute_charts_show_every_panel_the_warm_up_and_gaps() {
        let path = std::env::temp_dir().join(format!("cinder-minutes-{}.svg", std::process::id()));
        let panel = |name: &str, points: Vec<(f64, f64)>, band| MinutePanel {
            name: name.into(),
            points,
            format: human,
            band,
            floor: 0.0,
            spans: Vec::new(),
        };
        let panels = [
            panel(
                "server RSS",
                (1..=30).map(|m| (m as f64, 5e6)).collect(),
                Some((5e6, 5.5e6)),
            ),
            panel("open fds", Vec::new(), None),
            panel("deliveries/s", vec![(1.0, 1.5e5), (2.0, 1.6e5)], None),
            panel("p99 latency", vec![(1.0, 900.0)], None),
        ];
        minutes_svg("Cinder soak", "2k subscribers", 30, 5, &panels, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        for expected in [
            "Cinder soak",
            "2k subscribers",
            "server RSS",
            "open fds",
            "n/a (not measured)",
            "warm-up",
            "minute",
            "4M",
            "150k",
            "30",
        ] {
            assert!(svg.contains(expected), "no {expected:?}");
        }
        // Whole minutes only on the x axis.
        assert!(!svg.contains(">2.5<"));
    }

    #[test]
    fn geometric_sweeps_get_a_log_axis() {
        let axis = shard_axis(&[1, 2, 4, 8, 16]);
        assert!(axis.log);
        assert_eq!(axis.ticks, vec![1, 2, 4, 8, 16]);
        assert!(axis.range.start < 1.0 && axis.range.end > 16.0);
    }

    #[test]
    fn many_counts_are_thinned_to_whole_steps() {
        let wide: Vec<usize> = (1..=7).chain(9..=20).collect();
        let axis = shard_axis(&(5..=30).collect::<Vec<_>>());
        assert!(!axis.log);
        assert!(axis.ticks.len() <= MAX_TICKS);
        assert_eq!(axis.ticks[0], 5);
        assert!(axis.ticks.windows(2).all(|w| w[1] - w[0] == 3));
        let log = shard_axis(&wide);
        assert!(log.log);
        assert_eq!(log.ticks, vec![1, 2, 4, 8, 16]);
    }
}
