//! The run report: one self-contained HTML file (`RUN_DIR/report.html`, also
//! `lse-train report RUN_DIR`) that shows a run the way a person wants to look at it:
//!
//! - the loss and mIoU curves (SVG, with titles, axes and legends);
//! - per round: p, |S|, examples, iterations, time per phase, val mIoU, and the
//!   pseudo-label diagnostics when the target had labels (kept share, precision of
//!   kept and dropped pseudo-labels, confident vs other images, the entropy premise,
//!   the most frequent kept confusions), with the per-class thresholds;
//! - per round, a grid of a few confident images: the image with its windows, its
//!   masked pseudo-labels (Cityscapes palette, ignored pixels black), the ground
//!   truth when it exists, and every window's example image and pseudo-label;
//! - what each round trained on, at the level of its windows: ignored share and
//!   precision of the examples' pseudo-labels, per class, and the coverage map of
//!   where in the image the trained pixels come from (also `RUN_DIR/coverage.png`
//!   for the whole run);
//! - per-class IoU before and after adaptation, side by side.
//!
//! Pictures are embedded as data URIs, so the file can be mailed or archived alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use lse_runtime::evaluate::Evaluation;
use lse_runtime::labels;

use crate::diagnostics::{CoverageMap, WindowDiagnostics};
use crate::run::{self, Phase, RoundStats, RunDir, RunRecord};

/// File names of one pictured confident image in `samples/round-NN/`.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleFiles {
    pub image: String,
    pub pseudo: String,
    pub truth: String,
    /// Per window: its example image and its pseudo-label.
    pub windows: Vec<(String, String)>,
}

impl SampleFiles {
    pub fn new(index: usize, windows: usize) -> Self {
        let name = |part: &str| format!("{index:06}-{part}.png");
        Self {
            image: name("image"),
            pseudo: name("pseudo"),
            truth: name("truth"),
            windows: (0..windows)
                .map(|k| (name(&format!("w{k}-image")), name(&format!("w{k}-label"))))
                .collect(),
        }
    }
}

/// Writes `report.html` into the run directory (atomically) and returns its path.
pub fn write(run: &RunDir) -> anyhow::Result<PathBuf> {
    let record = run.read_record()?;
    let metrics = run.read_metrics();
    let html = render(run, &record, &metrics)?;
    if let Some(map) = run_coverage(&record) {
        let png = crate::plot::coverage_png(&map, COVERAGE_CELL)?;
        run::write_atomic(&run.root.join(COVERAGE_FILE), &png)?;
    }
    let path = run.report_path();
    run::write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// The whole run's coverage map, next to `report.html`.
pub const COVERAGE_FILE: &str = "coverage.png";
/// Pixels per side of one coverage bin in the pictures.
const COVERAGE_CELL: u32 = 8;

/// Each round's window-level diagnostics, for the rounds that have them.
fn window_rounds(record: &RunRecord) -> Vec<(&RoundStats, &WindowDiagnostics)> {
    record
        .rounds
        .iter()
        .filter_map(|r| Some((r, r.diagnostics.as_ref()?.window.as_ref()?)))
        .collect()
}

/// The coverage of every round together (`None` without window diagnostics).
pub fn run_coverage(record: &RunRecord) -> Option<CoverageMap> {
    let rounds: Vec<&WindowDiagnostics> = window_rounds(record).into_iter().map(|r| r.1).collect();
    CoverageMap::combine(&rounds)
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.1}", v * 100.0))
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_nan() => "NaN (keep all)".into(),
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

fn png_uri(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(png_data_uri(&bytes))
}

/// PNG bytes as a data URI, for pictures embedded in the report.
fn png_data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;\
padding:0 16px;color:#222}h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ccc;\
padding:3px 7px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px}\
figure{margin:0}figcaption{font-size:.8em;color:#555}img{width:100%;image-rendering:pixelated;\
display:block}.frame{position:relative}.win{position:absolute;border:2px solid #fff;\
outline:1px solid #000;box-sizing:border-box}.sample{border:1px solid #ddd;padding:8px;\
margin:10px 0}.up{color:#080}.down{color:#b00}.svg svg{max-width:100%;height:auto}\
.wide{overflow-x:auto;max-width:100%}.maps{display:grid;grid-template-columns:repeat(auto-fill,\
minmax(300px,1fr));gap:10px}";

fn render(
    run: &RunDir,
    record: &RunRecord,
    metrics: &[crate::metrics_log::MetricsPoint],
) -> anyhow::Result<String> {
    let mut h = String::new();
    let title = format!(
        "{} run {}",
        record.method,
        run.root.file_name().unwrap_or_default().to_string_lossy()
    );
    write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    )?;
    header(&mut h, &title, record)?;
    writeln!(
        h,
        "<h2>Curves</h2><div class=\"svg\" id=\"curves\">{}</div>",
        crate::plot::curves_svg(metrics, &record.miou_curve)?
    )?;
    if !record.rounds.is_empty() {
        rounds_table(&mut h, record)?;
        windows_section(&mut h, record)?;
        class_tables(&mut h, record)?;
        samples(&mut h, run, record)?;
    }
    per_class_iou(&mut h, record)?;
    h.push_str("</body></html>\n");
    Ok(h)
}

fn header(h: &mut String, title: &str, record: &RunRecord) -> anyhow::Result<()> {
    let miou = |e: &Option<Evaluation>| pct(e.as_ref().and_then(|e| e.miou));
    writeln!(h, "<h1>{}</h1><table>", esc(title))?;
    let rows = [
        ("status", record.status.to_string()),
        ("source", record.source.clone()),
        (
            "target",
            record.target.clone().unwrap_or_else(|| "–".into()),
        ),
        ("started from", record.init.display().to_string()),
        (
            "model",
            format!(
                "VGG16-FCN8s, width {}, {} classes, input {}x{}",
                record.width, record.classes, record.train_size[0], record.train_size[1]
            ),
        ),
        ("val mIoU before", miou(&record.initial_evaluation)),
        ("val mIoU after", miou(&record.evaluation)),
    ];
    for (k, v) in rows {
        writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v))?;
    }
    h.push_str("</table>\n");
    Ok(())
}

fn rounds_table(h: &mut String, record: &RunRecord) -> anyhow::Result<()> {
    h.push_str(
        "<h2>Rounds</h2><p>Kept share and precisions are over the labelled pixels of the \
         confident images (diagnostics: the target's labels are read only for this table, \
         never for training). Premise: mean normalised entropy H/ln C of the predictions on \
         full target images, on their up-scaled windows, and on source images.</p>\
         <div class=\"wide\"><table id=\"rounds\"><tr><th>round</th><th>p</th><th>|S|</th><th>examples</th>\
         <th>iterations</th><th>ignored %</th><th>kept %</th><th>kept precision %</th>\
         <th>dropped precision %</th><th>confident acc. %</th><th>others acc. %</th>\
         <th>H full</th><th>H windows</th><th>H source</th><th>source loss</th>\
         <th>target loss</th><th>val mIoU %</th><th>seconds (rank/thr/gen/diag/train/eval)</th></tr>\n",
    );
    for r in &record.rounds {
        let d = r.diagnostics.as_ref();
        let secs = Phase::ROUND
            .iter()
            .map(|k| r.seconds.get(k).map_or("–".into(), |s| format!("{s:.0}")))
            .collect::<Vec<_>>()
            .join(" / ");
        writeln!(
            h,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.round,
            r.p,
            r.confident,
            r.examples,
            r.iterations,
            pct(Some(r.ignored_share)),
            pct(d.and_then(|d| d.kept_share)),
            pct(d.and_then(|d| d.kept_precision)),
            pct(d.and_then(|d| d.dropped_precision)),
            pct(d.and_then(|d| d.confident_accuracy)),
            pct(d.and_then(|d| d.others_accuracy)),
            num(d.and_then(|d| d.premise.target_full), 3),
            num(d.and_then(|d| d.premise.target_windows), 3),
            num(d.and_then(|d| d.premise.source), 3),
            num(r.source_loss, 3),
            num(r.target_loss, 3),
            pct(r.miou),
            secs
        )?;
    }
    h.push_str("</table></div>\n");
    confusions(h, record)
}

fn confusions(h: &mut String, record: &RunRecord) -> anyhow::Result<()> {
    if record.rounds.iter().all(|r| r.diagnostics.is_none()) {
        return Ok(());
    }
    h.push_str(
        "<h3>Most frequent errors among kept pseudo-labels</h3><table id=\"confusions\">\
         <tr><th>round</th><th>truth → pseudo-label (share of kept pixels)</th></tr>\n",
    );
    for r in &record.rounds {
        let Some(d) = &r.diagnostics else { continue };
        let list = d
            .confusions
            .iter()
            .map(|c| {
                format!(
                    "{} → {} ({:.1} %)",
                    esc(&c.truth),
                    esc(&c.predicted),
                    c.share_of_kept * 100.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(h, "<tr><td>{}</td><td>{list}</td></tr>", r.round)?;
    }
    h.push_str("</table>\n");
    Ok(())
}

/// What each round trained on: the examples' pseudo-labels after masking, against
/// the windows' ground truth, and where in the image they come from.
fn windows_section(h: &mut String, record: &RunRecord) -> anyhow::Result<()> {
    let rounds = window_rounds(record);
    if rounds.is_empty() {
        return Ok(());
    }
    h.push_str(
        "<h2>What was trained on (window level)</h2><p>Every generated example after \
         upsampling and masking, against its window's ground truth (cut and brought to the \
         example's size by nearest neighbour). The kept share and precision above are over \
         the full images; these are over the labels the network actually trains on. A uniform \
         spread puts 25 % of the trained pixels in the central quarter of the image (middle \
         half of rows and columns) and 50 % in the top and bottom quarter-bands.</p>\
         <div class=\"wide\"><table id=\"windows\"><tr><th>round</th><th>trained pixels</th>\
         <th>ignored %</th><th>precision %</th><th>central quarter %</th>\
         <th>top + bottom bands %</th></tr>\n",
    );
    for (r, w) in &rounds {
        writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.round,
            w.trained_pixels,
            pct(w.ignored_share),
            pct(w.precision),
            pct(w.central_quarter_share),
            pct(w.top_bottom_bands_share)
        )?;
    }
    h.push_str("</table></div>\n");
    coverage_maps(h, record, &rounds)
}

/// The coverage maps of the whole run and of each round.
fn coverage_maps(
    h: &mut String,
    record: &RunRecord,
    rounds: &[(&RoundStats, &WindowDiagnostics)],
) -> anyhow::Result<()> {
    writeln!(
        h,
        "<h3>Coverage: where the trained pixels come from</h3><p>Trained pixels per image \
         position relative to a uniform spread; colour from 0 (dark blue) through 1 (uniform) \
         to {} or more (yellow), the bar below each map shows the scale.</p><div class=\"maps\">",
        crate::plot::COVERAGE_TOP
    )?;
    let uri = |map: &CoverageMap| -> anyhow::Result<String> {
        Ok(png_data_uri(&crate::plot::coverage_png(
            map,
            COVERAGE_CELL,
        )?))
    };
    if let Some(map) = run_coverage(record) {
        figure(h, &uri(&map)?, "all rounds")?;
    }
    for (r, w) in rounds {
        figure(h, &uri(&w.coverage)?, &format!("round {}", r.round))?;
    }
    h.push_str("</div>\n");
    Ok(())
}

/// Per round and class: images kept, threshold, kept share and precision.
fn class_tables(h: &mut String, record: &RunRecord) -> anyhow::Result<()> {
    h.push_str("<h2>Per class and round</h2>\n");
    for r in &record.rounds {
        writeln!(
            h,
            "<details><summary>Round {} (p = {:.2}): thresholds and pseudo-labels per class</summary>\
             <table><tr><th>class</th><th>images kept</th><th>τ</th><th>kept %</th>\
             <th>kept precision %</th><th>dropped precision %</th>\
             <th>share of trained window pixels %</th><th>window precision %</th></tr>",
            r.round, r.p
        )?;
        for c in 0..r.kept_per_class.len() {
            let tau = if r.degenerate_thresholds.contains(&c) {
                Some(f64::NAN)
            } else {
                r.thresholds.get(c).copied().flatten()
            };
            let d = r.diagnostics.as_ref().and_then(|d| d.per_class.get(c));
            let wd = r
                .diagnostics
                .as_ref()
                .and_then(|d| d.window.as_ref())
                .and_then(|w| w.per_class.get(c));
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                labels::train_name(c as u8),
                r.kept_per_class[c],
                num(tau, 3),
                pct(d.and_then(|d| d.kept_share)),
                pct(d.and_then(|d| d.kept_precision)),
                pct(d.and_then(|d| d.dropped_precision)),
                pct(wd.and_then(|w| w.trained_share)),
                pct(wd.and_then(|w| w.precision)),
            )?;
        }
        h.push_str("</table></details>\n");
    }
    Ok(())
}

fn figure(h: &mut String, uri: &str, caption: &str) -> anyhow::Result<()> {
    write!(
        h,
        "<figure><img src=\"{uri}\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>",
        esc(caption)
    )?;
    Ok(())
}

/// The grid of pictured confident images of every round.
fn samples(h: &mut String, run: &RunDir, record: &RunRecord) -> anyhow::Result<()> {
    h.push_str(
        "<h2>Pseudo-labels of confident images</h2><p>Per image: the image with its windows \
         (white boxes), its pseudo-labels at full scale after the reliability mask (ignored \
         pixels black), the ground truth when it exists; then each window's scale-invariant \
         example and its pseudo-label.</p>\n",
    );
    let [w, hgt] = record.train_size;
    for r in &record.rounds {
        writeln!(h, "<h3>Round {}</h3>", r.round)?;
        for s in &r.samples {
            sample(h, run, r, s, (w as f64, hgt as f64))?;
        }
    }
    Ok(())
}

fn sample(
    h: &mut String,
    run: &RunDir,
    r: &RoundStats,
    s: &run::RoundSample,
    (w, hgt): (f64, f64),
) -> anyhow::Result<()> {
    let dir = run.samples_dir(r.round);
    let files = SampleFiles::new(s.image, s.windows.len());
    writeln!(
        h,
        "<div class=\"sample\"><b>{}</b> (image {})<div class=\"grid\">",
        esc(&s.key),
        s.image
    )?;
    // The image with its windows drawn as boxes.
    h.push_str("<figure><div class=\"frame\">");
    write!(
        h,
        "<img src=\"{}\" alt=\"image\">",
        png_uri(&dir.join(&files.image))?
    )?;
    for win in &s.windows {
        write!(
            h,
            "<div class=\"win\" style=\"left:{:.2}%;top:{:.2}%;width:{:.2}%;height:{:.2}%\"></div>",
            100.0 * win.x as f64 / w,
            100.0 * win.y as f64 / hgt,
            100.0 * win.w as f64 / w,
            100.0 * win.h as f64 / hgt
        )?;
    }
    h.push_str("</div><figcaption>image and windows</figcaption></figure>");
    figure(
        h,
        &png_uri(&dir.join(&files.pseudo))?,
        "pseudo-labels (masked)",
    )?;
    if s.truth {
        figure(h, &png_uri(&dir.join(&files.truth))?, "ground truth")?;
    }
    for (k, (img, lab)) in files.windows.iter().enumerate() {
        figure(
            h,
            &png_uri(&dir.join(img))?,
            &format!("window {k}: example"),
        )?;
        figure(
            h,
            &png_uri(&dir.join(lab))?,
            &format!("window {k}: pseudo-label"),
        )?;
    }
    h.push_str("</div></div>\n");
    Ok(())
}

/// Per-class IoU of the starting and the final model.
fn per_class_iou(h: &mut String, record: &RunRecord) -> anyhow::Result<()> {
    let Some(after) = &record.evaluation else {
        return Ok(());
    };
    let after = after.class_ious();
    let before = record
        .initial_evaluation
        .as_ref()
        .map(Evaluation::class_ious);
    h.push_str(
        "<h2>Per-class IoU (target val)</h2><table id=\"per-class\"><tr><th>class</th>\
         <th>before %</th><th>after %</th><th>change</th></tr>\n",
    );
    for (i, (name, a)) in after.iter().enumerate() {
        let b = before.as_ref().and_then(|b| b.get(i)).and_then(|x| x.1);
        let change = match (b, a) {
            (Some(b), Some(a)) => {
                let d = (a - b) * 100.0;
                let class = if d >= 0.0 { "up" } else { "down" };
                format!("<span class=\"{class}\">{d:+.1}</span>")
            }
            _ => "–".into(),
        };
        writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{change}</td></tr>",
            esc(name),
            pct(b),
            pct(*a)
        )?;
    }
    h.push_str("</table>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(esc("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
        assert_eq!(pct(Some(0.1234)), "12.3");
        assert_eq!(pct(None), "–");
        assert_eq!(num(Some(f64::NAN), 2), "NaN (keep all)");
        let f = SampleFiles::new(7, 2);
        assert_eq!(f.image, "000007-image.png");
        assert_eq!(f.windows[1].1, "000007-w1-label.png");
    }
}
