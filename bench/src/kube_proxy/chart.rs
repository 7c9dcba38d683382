//! The report's PNG: panels of lines over the Service count, log-log.
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

/// The font plotters draws text with (it reads no system font
/// configuration): DejaVu Sans, from Debian's fonts-dejavu-core.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub struct Series {
    pub label: String,
    /// Index into the palette: the same thing has the same color in every
    /// panel.
    pub color: usize,
    /// (Service count, value); values ≤ 0 cannot be drawn on a log axis and
    /// are left out.
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub y_desc: String,
    pub series: Vec<Series>,
}

/// Draws `panels` side by side into `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font()?;
    let width = 560 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).with_context(|| format!("drawing {}", panel.title))?;
    }
    root.present()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

/// The smallest and largest of `values` widened to whole decades.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    (
        10f64.powf(lo.log10().floor()),
        10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
    )
}

fn draw_panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, p: &Panel) -> Result<()> {
    let all = || p.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = decades(all().map(|(x, _)| *x));
    let (y0, y1) = decades(all().map(|(_, y)| *y));
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("Services")
        .y_desc(p.y_desc.as_str())
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for s in &p.series {
        let color = Palette99::pick(s.color).to_rgba();
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(_, y)| *y > 0.0).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn axes_span_whole_decades() {
        assert_eq!(super::decades([3.0, 450.0].into_iter()), (1.0, 1000.0));
        assert_eq!(super::decades([0.02, 0.0].into_iter()), (0.01, 0.1));
        assert_eq!(super::decades(std::iter::empty()), (1.0, 10.0));
    }
}
