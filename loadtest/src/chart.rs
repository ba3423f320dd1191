//! SVG charts of sweep results (plotters, SVG backend: no fonts or native
//! libraries needed).

use std::path::Path;

use plotters::prelude::*;

use crate::scenario::sweep::{SweepReport, SweepRow};

/// Picks the figure a panel plots.
type Metric = fn(&SweepRow) -> f64;

/// Draws deliveries/s and server CPU per delivery against the shard count.
pub fn sweep_svg(sweep: &SweepReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(480);
    let max_shards = sweep.rows.iter().map(|r| r.shards).max().unwrap_or(1) as f64;
    let deliveries: Metric = |r| r.deliveries_per_sec;
    let cpu: Metric = |r| r.server_cpu_per_delivery_us;
    let panels = [
        (&left, "deliveries/s", deliveries),
        (&right, "server CPU µs per delivery", cpu),
    ];
    for (area, title, value) in panels {
        let top = sweep
            .rows
            .iter()
            .map(value)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} — {title}", sweep.scenario), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..max_shards + 0.5, 0.0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("shards")
            .y_desc(title)
            .draw()?;
        let points: Vec<(f64, f64)> = sweep
            .rows
            .iter()
            .map(|r| (r.shards as f64, value(r)))
            .collect();
        chart.draw_series(LineSeries::new(points.clone(), &BLUE))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    }
    root.present()?;
    Ok(())
}
