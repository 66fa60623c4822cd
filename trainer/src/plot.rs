//! The training curves as a picture: losses per logged iteration (top) and target
//! val mIoU per evaluation (bottom), with titles, labelled axes and legends. Drawn
//! once for two backends: `curves.png` in the run directory, and SVG for the run
//! report. Text uses the DejaVu Sans font compiled into the binary (crate `dejavu`),
//! so no system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics_log::MetricsPoint;

/// The font family the plots use.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the bundled DejaVu Sans is a valid font"));
    });
}

/// A named series of `(iteration, value)` points.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// `(iteration, value)` of every training iteration's line where `value` has a
/// finite value (the round summaries' mean losses are not points of the curve).
fn loss_curve(
    metrics: &[MetricsPoint],
    value: fn(&MetricsPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter(|m| m.is_iteration())
        .filter_map(|m| {
            value(m)
                .filter(|v| v.is_finite())
                .map(|v| (m.iteration as f64, v))
        })
        .collect()
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// One panel: title, axes with labels, the series and a legend.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    x_max: f64,
    y: std::ops::Range<f64>,
    series: Vec<Series>,
) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .x_desc("iteration")
        .y_desc(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    let mut any = false;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        any = true;
        let color = s.color;
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if s.points.len() <= 40 {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
    }
    if any {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The mIoU axis: the values' range with a margin of 15 % of it (at least 0.5 points)
/// on each side, within 0..100, so that a change of a point is visible.
fn miou_range(miou: &[(f64, f64)]) -> std::ops::Range<f64> {
    let lo = miou.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = miou.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return 0.0..100.0;
    }
    let pad = ((hi - lo) * 0.15).max(0.5);
    (lo - pad).max(0.0)..(hi + pad).min(100.0)
}

/// Draws both panels on `root`.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    metrics: &[MetricsPoint],
    miou: &[(u64, f64)],
) -> anyhow::Result<()> {
    register_font();
    root.fill(&WHITE).map_err(err)?;
    let src = loss_curve(metrics, |m| m.source_loss);
    let tgt = loss_curve(metrics, |m| m.target_loss);
    let miou: Vec<(f64, f64)> = miou.iter().map(|&(i, v)| (i as f64, v * 100.0)).collect();
    let x_max = src
        .iter()
        .chain(&tgt)
        .chain(&miou)
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let y_loss = src.iter().chain(&tgt).map(|p| p.1).fold(1e-3f64, f64::max) * 1.1;
    let y_miou = miou_range(&miou);
    let (h, _) = (root.dim_in_pixel().1, 0);
    let (top, bottom) = root.split_vertically(h * 3 / 5);
    panel(
        &top,
        "Training losses",
        "loss (per pixel, nats)",
        x_max,
        0.0..y_loss,
        vec![
            Series {
                name: "source cross-entropy",
                color: RGBColor(31, 119, 180),
                points: src,
            },
            Series {
                name: "target loss (generated examples)",
                color: RGBColor(214, 39, 40),
                points: tgt,
            },
        ],
    )?;
    panel(
        &bottom,
        "Target val mIoU",
        "mIoU (%)",
        x_max,
        y_miou,
        vec![Series {
            name: "mIoU after each evaluation",
            color: RGBColor(44, 160, 44),
            points: miou,
        }],
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes the curves as a PNG (900 x 700).
pub fn curves_png(
    path: &Path,
    metrics: &[MetricsPoint],
    miou: &[(u64, f64)],
) -> anyhow::Result<()> {
    let (w, h) = (900u32, 700u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, metrics, miou)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size matches");
    lse_runtime::imageio::write_rgb_png(path, &img)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The curves as an SVG document (for the report).
pub fn curves_svg(metrics: &[MetricsPoint], miou: &[(u64, f64)]) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 700)).into_drawing_area();
        draw(&root, metrics, miou)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Vec<MetricsPoint> {
        (1..=20)
            .map(|i| MetricsPoint {
                iteration: i,
                phase: "adapt".into(),
                source_loss: Some(3.0 / i as f64),
                target_loss: Some(1.0),
                miou: None,
            })
            .collect()
    }

    #[test]
    fn png_has_text_and_both_curves() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        curves_png(&p, &metrics(), &[(10, 0.3), (20, 0.4)]).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 700));
        let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| img.pixels().filter(|p| f(p)).count();
        // The blue, red and green series are drawn, and dark text (titles, tick labels).
        assert!(count(&|p| p[2] > 150 && p[0] < 60) > 200, "source curve");
        assert!(count(&|p| p[0] > 200 && p[1] < 60) > 200, "target curve");
        assert!(
            count(&|p| p[1] > 140 && p[0] < 60 && p[2] < 60) > 100,
            "mIoU curve"
        );
        assert!(
            count(&|p| p[0] < 40 && p[1] < 40 && p[2] < 40) > 2000,
            "text and axes"
        );
    }

    #[test]
    fn svg_has_titles_axes_and_legend() {
        let svg = curves_svg(&metrics(), &[(10, 0.3)]).unwrap();
        for text in [
            "Training losses",
            "Target val mIoU",
            "iteration",
            "mIoU (%)",
            "source cross-entropy",
            "target loss (generated examples)",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}

/// Colours of the coverage maps, from 0 to the top of the scale (a perceptually
/// ordered dark-blue → green → yellow ramp, as viridis).
const RAMP: [[f32; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];

/// The colour of `v` on a scale from 0 to `top` (clamped), interpolated on [`RAMP`].
fn ramp(v: f32, top: f32) -> [u8; 3] {
    let t = (v / top).clamp(0.0, 1.0) * (RAMP.len() - 1) as f32;
    let i = (t.floor() as usize).min(RAMP.len() - 2);
    let f = t - i as f32;
    std::array::from_fn(|c| (RAMP[i][c] + (RAMP[i + 1][c] - RAMP[i][c]) * f).round() as u8)
}

/// Top of the coverage maps' colour scale: three times the uniform density.
pub const COVERAGE_TOP: f32 = 3.0;

/// A coverage map as a PNG picture: each bin a `cell x cell` square coloured by its
/// density on the scale 0 .. [`COVERAGE_TOP`] (1 = uniform), with a colour bar of
/// the scale along the bottom (its left end 0, its right end the top).
pub fn coverage_png(map: &crate::diagnostics::CoverageMap, cell: u32) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (map.width as u32 * cell, map.height as u32 * cell);
    let bar = cell.max(6);
    let mut img = image::RgbImage::new(w, h + bar + 2);
    for (x, y, px) in img.enumerate_pixels_mut() {
        *px = if y < h {
            let i = (y / cell) as usize * map.width + (x / cell) as usize;
            image::Rgb(ramp(map.density[i], COVERAGE_TOP))
        } else if y < h + 2 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb(ramp(
                COVERAGE_TOP * x as f32 / (w.max(2) - 1) as f32,
                COVERAGE_TOP,
            ))
        };
    }
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("encoding the coverage map")?;
    Ok(png)
}

#[cfg(test)]
mod coverage_tests {
    use super::*;

    #[test]
    fn miou_axis_fits_the_values() {
        // A change of a point: the margin's minimum, 0.5.
        let r = miou_range(&[(0.0, 45.9), (10.0, 46.9)]);
        assert!(
            (r.start - 45.4).abs() < 1e-9 && (r.end - 47.4).abs() < 1e-9,
            "{r:?}"
        );
        // Ten points: 15 % of the range on each side.
        let r = miou_range(&[(0.0, 40.0), (10.0, 50.0)]);
        assert!(
            (r.start - 38.5).abs() < 1e-9 && (r.end - 51.5).abs() < 1e-9,
            "{r:?}"
        );
        let r = miou_range(&[(0.0, 0.2)]);
        assert!(r.start == 0.0 && (r.end - 0.7).abs() < 1e-9, "{r:?}");
        assert_eq!(miou_range(&[]), 0.0..100.0);
    }

    #[test]
    fn ramp_ends_and_middle() {
        assert_eq!(ramp(0.0, 3.0), [68, 1, 84]);
        assert_eq!(ramp(3.0, 3.0), [253, 231, 37]);
        assert_eq!(ramp(9.0, 3.0), [253, 231, 37]);
        assert_eq!(ramp(1.5, 3.0), [33, 145, 140]);
        // Halfway between the first two anchors.
        assert_eq!(ramp(0.375, 3.0), [64, 42, 112]);
    }

    #[test]
    fn coverage_png_colours_each_bin() {
        let map = crate::diagnostics::CoverageMap {
            width: 2,
            height: 1,
            density: vec![0.0, 3.0],
        };
        let png = coverage_png(&map, 4).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (8, 4 + 6 + 2));
        assert_eq!(img.get_pixel(1, 1).0, [68, 1, 84]);
        assert_eq!(img.get_pixel(6, 3).0, [253, 231, 37]);
        // The colour bar runs from 0 to the top.
        assert_eq!(img.get_pixel(0, 11).0, [68, 1, 84]);
        assert_eq!(img.get_pixel(7, 11).0, [253, 231, 37]);
    }
}
