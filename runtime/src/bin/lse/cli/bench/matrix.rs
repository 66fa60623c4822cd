//! `lse bench --matrix`: one `lse bench` child process per (provider, precision,
//! batch), one table. A combination that cannot run here gets the reason instead of
//! numbers: the child's error (no CUDA provider in this ONNX Runtime build, no
//! TensorRT, ...) or a missing float16 model.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

use super::{Args, BenchReport};
use lse_runtime::contract::Precision;
use lse_runtime::engine::Provider;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub provider: Provider,
    pub precision: Precision,
    pub batch: usize,
    /// The child's report (ms/image, images/s, memory, first run, mIoU), if it ran.
    pub result: Option<BenchReport>,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// mIoU minus the fp32 row's of the same provider and batch (points).
    pub miou_change: Option<f64>,
}

/// Peak resident memory of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vmhwm_kib(&s).map(|k| k as f64 / 1024.0)
}

fn parse_vmhwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// GPU memory held by process `pid` (`nvidia-smi --query-compute-apps`), MiB; ONNX
/// Runtime's arena keeps what it allocated, so at the end of a run this is its peak.
pub fn device_mib(pid: u32) -> Option<f64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    parse_compute_apps(&String::from_utf8_lossy(&out.stdout), pid)
}

fn parse_compute_apps(csv: &str, pid: u32) -> Option<f64> {
    csv.lines()
        .filter_map(|l| l.split_once(','))
        .filter(|(p, _)| p.trim().parse() == Ok(pid))
        .filter_map(|(_, m)| m.trim().parse::<f64>().ok())
        .reduce(f64::max)
}

/// The model a row runs, or why there is none.
fn model_for(a: &Args, provider: Provider, precision: Precision) -> Result<PathBuf, String> {
    let main = super::super::model_or_default(a.model.clone()).map_err(|e| e.to_string())?;
    match (provider, precision) {
        // Integer arithmetic needs the calibrated scales of the QDQ file, on every
        // provider (TensorRT reads them as explicit quantization).
        (_, Precision::Int8) => a.int8_model.clone().ok_or_else(|| {
            format!(
                "{provider} runs int8 from a calibrated QDQ model: pass --int8-model (lse-train export --precision int8 --calibrate DATASET)"
            )
        }),
        (Provider::Tensorrt, _) | (_, Precision::Fp32) => Ok(main),
        (_, Precision::Fp16) => a.fp16_model.clone().ok_or_else(|| {
            format!(
                "{provider} runs float16 from a float16 model: pass --fp16-model (lse-train export --precision fp16)"
            )
        }),
    }
}

/// The child's command line for one combination.
fn child_args(a: &Args, model: &std::path::Path, row: &Row) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["bench".into(), model.into()];
    let mut push = |k: &str, val: String| {
        v.push(k.into());
        v.push(val.into());
    };
    push("--provider", row.provider.to_string());
    push("--precision", row.precision.to_string());
    push("--batch", row.batch.to_string());
    let max = a.batch.iter().copied().max().unwrap_or(row.batch);
    push("--max-batch", a.max_batch.unwrap_or(max).to_string());
    push("--iters", a.iters.to_string());
    push("--threads", a.threads.to_string());
    push("--size", format!("{}x{}", a.size[0], a.size[1]));
    push("--device", a.device.to_string());
    let up = if a.upsample == lse_runtime::predict::Upsample::Labels {
        "labels"
    } else {
        "probabilities"
    };
    push("--upsample", up.into());
    for (k, p) in [
        ("--image", &a.image),
        ("--images", &a.images),
        ("--gt", &a.gt),
        ("--trt-cache", &a.trt_cache),
        ("--ort-lib", &a.ort_lib),
    ] {
        if let Some(p) = p {
            push(k, p.display().to_string());
        }
    }
    v.push("--json".into());
    v
}

/// Runs one combination in a child process.
fn measure(a: &Args, row: &mut Row) -> anyhow::Result<()> {
    let model = match model_for(a, row.provider, row.precision) {
        Ok(m) => m,
        Err(why) => {
            row.skipped = Some(why);
            return Ok(());
        }
    };
    let exe = std::env::current_exe().context("finding the lse executable")?;
    let out = Command::new(&exe)
        .args(child_args(a, &model, row))
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if out.status.success() {
        row.result = Some(serde_json::from_slice(&out.stdout).context("the child's JSON")?);
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("failed without a message");
        row.skipped = Some(why.to_string());
    }
    Ok(())
}

/// Fills in the mIoU change against the fp32 row of the same provider and batch.
fn miou_changes(rows: &mut [Row]) {
    let miou = |r: &Row| r.result.as_ref().and_then(|v| v.miou);
    let base: Vec<(Provider, usize, f64)> = rows
        .iter()
        .filter(|r| r.precision == Precision::Fp32)
        .filter_map(|r| miou(r).map(|m| (r.provider, r.batch, m)))
        .collect();
    for r in rows.iter_mut() {
        let reference = base
            .iter()
            .find(|(p, b, _)| *p == r.provider && *b == r.batch);
        r.miou_change = match (miou(r), reference) {
            (Some(m), Some((_, _, m0))) => Some(m - m0),
            _ => None,
        };
    }
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let providers = if a.matrix.is_empty() {
        vec![a.provider]
    } else {
        a.matrix.clone()
    };
    let mut rows = Vec::new();
    for &provider in &providers {
        for &precision in &a.precision {
            for &batch in &a.batch {
                let mut row = Row {
                    provider,
                    precision,
                    batch,
                    result: None,
                    skipped: None,
                    miou_change: None,
                };
                tracing::info!(%provider, %precision, batch, "measuring");
                measure(a, &mut row)?;
                rows.push(row);
            }
        }
    }
    miou_changes(&mut rows);
    if a.json {
        return super::super::print_json(&rows);
    }
    print!("{}", table(&rows));
    Ok(())
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// The table: one line per row.
pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<9} {:<5} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7}\n",
        "provider",
        "prec",
        "batch",
        "ms/image",
        "images/s",
        "host MiB",
        "dev MiB",
        "first s",
        "mIoU",
        "change"
    );
    for r in rows {
        let head = format!(
            "{:<9} {:<5} {:>5}",
            r.provider.to_string(),
            r.precision.to_string(),
            r.batch
        );
        match (&r.result, &r.skipped) {
            (Some(v), _) => {
                let change = r
                    .miou_change
                    .map_or_else(|| "-".into(), |c| format!("{c:+.2}"));
                s += &format!(
                    "{head} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7}\n",
                    cell(Some(v.ms_per_image), 1),
                    cell(Some(v.images_per_s), 2),
                    cell(v.peak_host_mib, 0),
                    cell(v.device_mib, 0),
                    cell(Some(v.first_run_s), 2),
                    cell(v.miou, 2),
                    change
                );
            }
            (None, why) => {
                s += &format!("{head} not run: {}\n", why.as_deref().unwrap_or("?"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_readings_parse() {
        let status = "Name:\tlse\nVmPeak:\t  900 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vmhwm_kib(status), Some(204800));
        assert_eq!(parse_vmhwm_kib("Name: x\n"), None);
        let csv = "123, 900\n456, 2048\n456, 1024\n";
        assert_eq!(parse_compute_apps(csv, 456), Some(2048.0));
        assert_eq!(parse_compute_apps(csv, 7), None);
        assert!(peak_rss_mib().is_some_and(|m| m > 0.0));
    }

    fn row(provider: Provider, precision: Precision, batch: usize, miou: Option<f64>) -> Row {
        // A child's report as `lse bench --json` wrote it before the type existed.
        let written = include_str!("../../../../../tests/fixtures/bench.json");
        let report: BenchReport = serde_json::from_str(written).unwrap();
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::from_str::<serde_json::Value>(written).unwrap()
        );
        Row {
            provider,
            precision,
            batch,
            result: Some(BenchReport {
                miou,
                ms_per_image: 12.345,
                ..report
            }),
            skipped: None,
            miou_change: None,
        }
    }

    #[test]
    fn miou_change_is_against_fp32_of_the_same_provider_and_batch() {
        use Precision::*;
        use Provider::*;
        let mut rows = vec![
            row(Cpu, Fp32, 1, Some(40.0)),
            row(Cpu, Fp16, 1, Some(39.5)),
            row(Tensorrt, Fp32, 8, Some(41.0)),
            row(Tensorrt, Fp16, 8, Some(40.25)),
            row(Tensorrt, Fp16, 1, Some(40.0)),
            row(Cuda, Fp16, 1, None),
        ];
        miou_changes(&mut rows);
        let changes: Vec<Option<f64>> = rows.iter().map(|r| r.miou_change).collect();
        assert_eq!(
            changes,
            vec![Some(0.0), Some(-0.5), Some(0.0), Some(-0.75), None, None]
        );
        rows.push(Row {
            skipped: Some("no CUDA provider".into()),
            result: None,
            ..row(Cuda, Fp32, 8, None)
        });
        let t = table(&rows);
        assert!(t.contains("cpu       fp16      1      12.3"), "{t}");
        assert!(t.contains("-0.50"), "{t}");
        assert!(
            t.contains("cuda      fp32      8 not run: no CUDA provider"),
            "{t}"
        );
    }

    #[test]
    fn fp16_rows_of_cpu_and_cuda_need_a_float16_model() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: Args,
        }
        let t = T::try_parse_from([
            "t",
            "m.onnx",
            "--matrix",
            "cpu,tensorrt",
            "--precision",
            "fp32,fp16",
            "--batch",
            "1,8",
        ])
        .unwrap();
        assert_eq!(t.a.matrix, vec![Provider::Cpu, Provider::Tensorrt]);
        assert_eq!(t.a.batch, vec![1, 8]);
        let m = |p, q| model_for(&t.a, p, q);
        assert_eq!(
            m(Provider::Cpu, Precision::Fp32),
            Ok(PathBuf::from("m.onnx"))
        );
        assert_eq!(
            m(Provider::Tensorrt, Precision::Fp16),
            Ok(PathBuf::from("m.onnx"))
        );
        assert!(
            m(Provider::Cpu, Precision::Fp16)
                .unwrap_err()
                .contains("--fp16-model")
        );
        for p in [Provider::Cpu, Provider::Tensorrt] {
            assert!(m(p, Precision::Int8).unwrap_err().contains("--int8-model"));
        }
        let r = Row {
            provider: Provider::Tensorrt,
            precision: Precision::Fp16,
            batch: 8,
            result: None,
            skipped: None,
            miou_change: None,
        };
        let args: Vec<String> = child_args(&t.a, std::path::Path::new("m.onnx"), &r)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with(
                "bench m.onnx --provider tensorrt --precision fp16 --batch 8 --max-batch 8"
            ),
            "{joined}"
        );
        assert!(joined.ends_with("--json"), "{joined}");
        // Batch 1 is built for the largest batch too: one engine per precision.
        let r1 = Row { batch: 1, ..r };
        let joined: Vec<String> = child_args(&t.a, std::path::Path::new("m.onnx"), &r1)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert!(
            joined.join(" ").contains("--batch 1 --max-batch 8"),
            "{joined:?}"
        );
    }
}
