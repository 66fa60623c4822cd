//! The lines of a run's `metrics.jsonl`: what the training loop writes (one type per
//! line shape) and what the plot and a resumed run read back.
//!
//! The written fields keep the order the file has always had: an iteration line in
//! its declared order, the eval and round lines in alphabetical order (they were
//! `serde_json::json!` objects).

use serde::{Deserialize, Serialize};

/// A training iteration's line (every `log_every` iterations).
#[derive(Debug, Serialize)]
pub struct IterationLine<'a> {
    pub iteration: u64,
    pub lr: f64,
    /// `"source"` (source-only training) or `"adapt"`.
    pub phase: &'a str,
    /// Adaptation: the 1-based round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<usize>,
    pub source_loss: f64,
    /// Adaptation: the loss on the generated target examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_loss: Option<f64>,
}

/// A val evaluation's line.
#[derive(Debug, Serialize)]
pub struct EvalLine {
    pub iteration: u64,
    pub miou: f64,
    /// Always [`EVAL`].
    pub phase: &'static str,
}

/// The end of an adaptation round: its pseudo-label counts, mean losses and val mIoU.
#[derive(Debug, Serialize)]
pub struct RoundLine {
    pub confident: usize,
    pub examples: usize,
    pub ignored_share: f64,
    pub iteration: u64,
    pub miou: Option<f64>,
    /// Always [`ROUND`].
    pub phase: &'static str,
    /// 1-based.
    pub round: usize,
    pub source_loss: Option<f64>,
    pub target_loss: Option<f64>,
}

/// The `phase` of an eval line.
pub const EVAL: &str = "eval";
/// The `phase` of a round line.
pub const ROUND: &str = "round";

/// Any line read back: the fields the readers use (others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MetricsPoint {
    pub iteration: u64,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub source_loss: Option<f64>,
    #[serde(default)]
    pub target_loss: Option<f64>,
    #[serde(default)]
    pub miou: Option<f64>,
}

impl MetricsPoint {
    /// A training iteration's line (not an eval or round summary).
    pub fn is_iteration(&self) -> bool {
        self.phase != EVAL && self.phase != ROUND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// metrics.jsonl of a tiny adaptation, written before the lines were types.
    const WRITTEN: &str = include_str!("../tests/fixtures/metrics-adapt.jsonl");

    fn line(l: &impl Serialize) -> String {
        serde_json::to_string(l).unwrap()
    }

    #[test]
    fn iteration_lines_are_written_as_before() {
        let written: Vec<&str> = WRITTEN.lines().collect();
        let adapt = IterationLine {
            iteration: 1,
            lr: 0.0001,
            phase: "adapt",
            round: Some(1),
            source_loss: 4.087699890136719,
            target_loss: Some(2.7875983715057373),
        };
        assert_eq!(line(&adapt), written[1]);
        // The first line of the source-only run's metrics.jsonl.
        let source_only = IterationLine {
            phase: "source",
            round: None,
            source_loss: 5.846829891204834,
            target_loss: None,
            ..adapt
        };
        assert_eq!(
            line(&source_only),
            r#"{"iteration":1,"lr":0.0001,"phase":"source","source_loss":5.846829891204834}"#
        );
    }

    #[test]
    fn eval_and_round_lines_are_written_as_before() {
        let written: Vec<&str> = WRITTEN.lines().collect();
        let eval = EvalLine {
            iteration: 0,
            miou: 0.0043268266303419485,
            phase: EVAL,
        };
        assert_eq!(line(&eval), written[0]);
        let round = RoundLine {
            confident: 1,
            examples: 2,
            ignored_share: 0.4019097222222222,
            iteration: 2,
            miou: Some(0.004232953574096234),
            phase: ROUND,
            round: 1,
            source_loss: Some(3.844268798828125),
            target_loss: Some(2.462274193763733),
        };
        assert!(written.contains(&line(&round).as_str()), "{}", line(&round));
        let empty = RoundLine {
            miou: None,
            source_loss: None,
            target_loss: None,
            ..round
        };
        let value: serde_json::Value = serde_json::from_str(&line(&empty)).unwrap();
        assert!(value["miou"].is_null() && value["source_loss"].is_null());
    }

    #[test]
    fn every_written_line_reads_back_with_its_kind() {
        let points: Vec<MetricsPoint> = WRITTEN
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<bool> = points.iter().map(MetricsPoint::is_iteration).collect();
        let by_text: Vec<bool> = WRITTEN
            .lines()
            .map(|l| !l.contains(r#""phase":"eval""#) && !l.contains(r#""phase":"round""#))
            .collect();
        assert_eq!(kinds, by_text);
        assert!(kinds.contains(&true) && kinds.contains(&false));
        assert_eq!(points[0].miou, Some(0.0043268266303419485));
    }
}
