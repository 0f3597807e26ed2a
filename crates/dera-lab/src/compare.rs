//! DeRa against retrained and weight-merged models: the paper's Figure 2 comparison.
//!
//! Inputs are sweep outputs ([`crate::sweep`]): one DeRa sweep of the aligned model over a
//! lambda grid, and one file per comparison model (a model retrained at `beta / lambda`, or
//! the weight-space merge at `lambda`) swept at lambda = 1 against the same reference, so
//! its KL is measured the same way. Every row reports mean reward, length and KL; the length
//! distributions are compared by total variation distance to the retrained model's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{LabError, Result};
use crate::plot::{Chart, Series, Style};
use crate::sweep::{LambdaSummary, SampleRecord, summarize};

/// Width of a length-histogram bin, in words.
pub const BIN_WORDS: usize = 5;

/// A comparison model: `LABEL@LAMBDA=FILE` on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    /// Method name, e.g. `retrained` or `merged`.
    pub label: String,
    /// The DeRa lambda it stands for.
    pub lambda: f64,
    /// Its sweep output (swept at lambda = 1).
    pub file: PathBuf,
}

impl PointSpec {
    /// Parses `LABEL@LAMBDA=FILE`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| LabError::spec("comparison point", spec, why);
        let (head, file) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected LABEL@LAMBDA=FILE"))?;
        let (label, lambda) = head
            .split_once('@')
            .ok_or_else(|| bad("expected LABEL@LAMBDA before '='"))?;
        let lambda: f64 = lambda
            .trim()
            .parse()
            .map_err(|_| bad("LAMBDA is not a number"))?;
        if !lambda.is_finite() || label.trim().is_empty() || file.trim().is_empty() {
            return Err(bad("empty label or file, or non-finite lambda"));
        }
        Ok(Self {
            label: label.trim().into(),
            lambda,
            file: PathBuf::from(file.trim()),
        })
    }
}

/// One row of the comparison.
#[derive(Debug, Clone)]
pub struct Row {
    /// `DeRa` or the point's label.
    pub method: String,
    /// The lambda it stands for.
    pub lambda: f64,
    /// Averages.
    pub summary: LambdaSummary,
    /// Fraction of responses cut by the token limit.
    pub truncated: f64,
    /// Length histogram: fraction of responses per [`BIN_WORDS`]-word bin.
    pub histogram: Vec<f64>,
}

/// The comparison: the DeRa curve, the points, and their length-distribution distances.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// DeRa rows, one per lambda of its sweep.
    pub dera: Vec<Row>,
    /// Comparison rows.
    pub points: Vec<Row>,
}

fn histogram(records: &[&SampleRecord]) -> Vec<f64> {
    let mut h: Vec<f64> = Vec::new();
    for r in records {
        let b = r.words / BIN_WORDS;
        if h.len() <= b {
            h.resize(b + 1, 0.0);
        }
        h[b] += 1.0;
    }
    let n = records.len().max(1) as f64;
    h.iter_mut().for_each(|x| *x /= n);
    h
}

/// Total variation distance between two histograms (0 = same, 1 = disjoint).
pub fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().max(b.len());
    let get = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(0.0);
    0.5 * (0..n).map(|i| (get(a, i) - get(b, i)).abs()).sum::<f64>()
}

fn row(method: &str, lambda: f64, records: &[&SampleRecord]) -> Result<Row> {
    let owned: Vec<SampleRecord> = records.iter().map(|r| (*r).clone()).collect();
    let summary = summarize(&owned)
        .into_iter()
        .next()
        .ok_or_else(|| LabError::Other(format!("{method} at lambda {lambda}: no samples")))?;
    let truncated = records
        .iter()
        .filter(|r| r.finish_reason == "length")
        .count() as f64
        / records.len().max(1) as f64;
    Ok(Row {
        method: method.into(),
        lambda,
        summary,
        truncated,
        histogram: histogram(records),
    })
}

impl Comparison {
    /// Builds the comparison from a DeRa sweep (single aligned model) and the points' samples,
    /// each swept at the single lambda vector `[1]`.
    pub fn new(dera: &[SampleRecord], points: &[(PointSpec, Vec<SampleRecord>)]) -> Result<Self> {
        let mut by_lambda: BTreeMap<u64, (f64, Vec<&SampleRecord>)> = BTreeMap::new();
        for r in dera {
            let [l] = r.lambdas[..] else {
                return Err(LabError::Other(format!(
                    "the DeRa sweep must have one aligned model; found lambdas {:?}",
                    r.lambdas
                )));
            };
            // Order by value; f64 bits order positive numbers correctly, shift negatives.
            let k = ordered(l);
            by_lambda.entry(k).or_insert((l, Vec::new())).1.push(r);
        }
        let dera = by_lambda
            .values()
            .map(|(l, recs)| row("DeRa", *l, recs))
            .collect::<Result<Vec<_>>>()?;
        let points = points
            .iter()
            .map(|(spec, recs)| {
                if let Some(r) = recs.iter().find(|r| r.lambdas != [1.0]) {
                    return Err(LabError::Other(format!(
                        "{}: expected a sweep at lambda 1 (the model itself against the \
                         reference), found lambdas {:?}",
                        spec.file.display(),
                        r.lambdas
                    )));
                }
                let refs: Vec<&SampleRecord> = recs.iter().collect();
                row(&spec.label, spec.lambda, &refs)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { dera, points })
    }

    /// The DeRa row at `lambda`, if the sweep has it.
    pub fn dera_at(&self, lambda: f64) -> Option<&Row> {
        self.dera.iter().find(|r| r.lambda == lambda)
    }

    /// The retrained-model row at `lambda` (label `retrained`), if given.
    pub fn retrained_at(&self, lambda: f64) -> Option<&Row> {
        self.points
            .iter()
            .find(|r| r.method == "retrained" && r.lambda == lambda)
    }

    /// A Markdown table: every DeRa lambda, then every point, with the total variation distance
    /// of its length distribution to the retrained model's at the same lambda.
    pub fn markdown(&self, reward: &str) -> String {
        let mut s = format!(
            "| method | lambda | samples | {reward} | words | KL to ref (nats) | truncated | \
             TV(length, retrained) |\n|---|---|---|---|---|---|---|---|\n"
        );
        for r in self.dera.iter().chain(&self.points) {
            let tv = match self.retrained_at(r.lambda) {
                Some(t) if r.method != "retrained" => {
                    format!("{:.3}", total_variation(&r.histogram, &t.histogram))
                }
                _ => String::new(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1} | {:.2} ± {:.2} | {:.0}% | {} |\n",
                r.method,
                r.lambda,
                r.summary.samples,
                r.summary
                    .mean_reward
                    .get(reward)
                    .copied()
                    .unwrap_or(f64::NAN),
                r.summary.mean_words,
                r.summary.mean_kl,
                r.summary.kl_stderr,
                100.0 * r.truncated,
                tv
            ));
        }
        s
    }

    /// Reward, KL and length against lambda (DeRa as a line, the points as markers), then one
    /// length-distribution panel per point lambda.
    pub fn charts(&self, reward: &str) -> Vec<Chart> {
        let mut methods: Vec<&str> = Vec::new();
        for p in &self.points {
            if !methods.contains(&p.method.as_str()) {
                methods.push(&p.method);
            }
        }
        let panel = |title: &str, y: &str, f: &dyn Fn(&Row) -> f64| {
            let mut series = vec![Series {
                label: "DeRa".into(),
                points: self.dera.iter().map(|r| (r.lambda, f(r))).collect(),
                style: Style::Line,
            }];
            for m in &methods {
                series.push(Series {
                    label: (*m).into(),
                    points: self
                        .points
                        .iter()
                        .filter(|r| r.method == *m)
                        .map(|r| (r.lambda, f(r)))
                        .collect(),
                    style: Style::Points,
                });
            }
            Chart {
                title: title.into(),
                x_label: "lambda (retrained: beta / lambda)".into(),
                y_label: y.into(),
                series,
            }
        };
        let mut charts = vec![
            panel(&format!("mean {reward} reward"), "mean reward", &|r| {
                r.summary
                    .mean_reward
                    .get(reward)
                    .copied()
                    .unwrap_or(f64::NAN)
            }),
            panel("KL(model || reference)", "sequence KL (nats)", &|r| {
                r.summary.mean_kl
            }),
            panel("mean length", "words", &|r| r.summary.mean_words),
        ];
        let mut lambdas: Vec<f64> = self.points.iter().map(|r| r.lambda).collect();
        lambdas.sort_by(f64::total_cmp);
        lambdas.dedup();
        for l in lambdas {
            let hist = |r: &Row| Series {
                label: r.method.clone(),
                points: r
                    .histogram
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (((i * BIN_WORDS) as f64) + BIN_WORDS as f64 / 2.0, p))
                    .collect(),
                style: Style::Line,
            };
            let mut series: Vec<Series> = self.dera_at(l).map(hist).into_iter().collect();
            series.extend(self.points.iter().filter(|r| r.lambda == l).map(hist));
            charts.push(Chart {
                title: format!("length distribution, lambda {l}"),
                x_label: "words".into(),
                y_label: format!("fraction per {BIN_WORDS}-word bin"),
                series,
            });
        }
        charts
    }
}

fn ordered(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(lambda: f64, words: usize, reward: f64, kl: f64) -> SampleRecord {
        SampleRecord {
            prompt_index: 0,
            prompt: "p".into(),
            lambdas: vec![lambda],
            sample: words,
            response: vec!["w"; words].join(" "),
            tokens: words,
            words,
            rewards: BTreeMap::from([("length:2-3".to_string(), reward)]),
            kl,
            logprob: 0.0,
            finish_reason: if words > 8 { "length" } else { "eos" }.into(),
        }
    }

    #[test]
    fn point_specs_parse_and_reject_junk() {
        let p = PointSpec::parse("retrained@0.5=a/b.jsonl").unwrap();
        assert_eq!(p.label, "retrained");
        assert_eq!(p.lambda, 0.5);
        assert_eq!(p.file, PathBuf::from("a/b.jsonl"));
        for bad in ["x", "retrained=f", "@1=f", "m@nan=f", "m@1=", "m@x=f"] {
            assert!(PointSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn total_variation_bounds() {
        assert_eq!(total_variation(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
        assert_eq!(total_variation(&[1.0], &[0.0, 1.0]), 1.0);
        assert!((total_variation(&[0.75, 0.25], &[0.25, 0.75]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn rows_average_group_and_compare() {
        let dera = vec![
            rec(2.0, 12, -1.0, 4.0),
            rec(0.0, 1, -1.0, 0.0),
            rec(2.0, 2, 0.0, 2.0),
            rec(0.0, 3, 0.0, 0.0),
        ];
        let retrained = vec![rec(1.0, 2, 0.0, 3.0), rec(1.0, 3, 0.0, 5.0)];
        let spec = PointSpec::parse("retrained@2=r.jsonl").unwrap();
        let c = Comparison::new(&dera, &[(spec.clone(), retrained)]).unwrap();
        assert_eq!(
            c.dera.iter().map(|r| r.lambda).collect::<Vec<_>>(),
            [0.0, 2.0]
        );
        let d2 = c.dera_at(2.0).unwrap();
        assert_eq!(d2.summary.mean_kl, 3.0);
        assert_eq!(d2.truncated, 0.5);
        assert_eq!(d2.histogram, vec![0.5, 0.0, 0.5]);
        let r = c.retrained_at(2.0).unwrap();
        assert_eq!(r.summary.mean_reward["length:2-3"], 0.0);
        assert_eq!(r.summary.mean_kl, 4.0);
        // DeRa at 2 has half its mass in the retrained model's only bin.
        assert_eq!(total_variation(&d2.histogram, &r.histogram), 0.5);
        let md = c.markdown("length:2-3");
        assert!(md.contains("| DeRa | 2 | 2 | -0.500 | 7.0 | 3.00 ± 1.00 | 50% | 0.500 |"));
        assert!(md.contains("| retrained | 2 | 2 | 0.000 | 2.5 | 4.00 ± 1.00 | 0% |  |"));
        let charts = c.charts("length:2-3");
        assert_eq!(charts.len(), 4);
        assert_eq!(charts[0].series[1].points, vec![(2.0, 0.0)]);

        // A point swept at another lambda is refused, naming its file.
        let wrong = vec![rec(0.5, 2, 0.0, 1.0)];
        let e = Comparison::new(&dera, &[(spec, wrong)]).unwrap_err();
        assert!(e.to_string().contains("r.jsonl"), "{e}");
    }
}
