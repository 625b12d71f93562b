//! Figures (median and spread over repeated runs), the results table and its JSON.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One measured quantity over repeated runs.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    pub samples: Vec<f64>,
}

impl Figure {
    /// `None` when there are no (finite) samples.
    pub fn of(samples: &[f64]) -> Option<Figure> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Figure {
            median,
            min: s[0],
            max: s[n - 1],
            n,
            samples: samples.to_vec(),
        })
    }
}

/// Which way is better, for the target check.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    AtMost,
    AtLeast,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub goal: Goal,
    pub value: f64,
    pub met: bool,
}

/// One row: our figure, the target, and each peer's figure in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub ours: Option<Figure>,
    pub target: Option<Target>,
    pub peers: BTreeMap<String, Figure>,
    /// ours / peer (medians).
    pub ratios: BTreeMap<String, f64>,
    pub note: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, String>,
    pub mode: String,
    pub rows: Vec<Row>,
    /// Scenarios or peers that could not run, and why.
    pub skipped: Vec<String>,
}

impl Report {
    /// Add a row (ratios are filled in from the medians).
    pub fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: &str,
        ours: Option<Figure>,
        target: Option<(Goal, f64)>,
        peers: Vec<(&str, Option<Figure>)>,
    ) -> &mut Row {
        let target = match (target, &ours) {
            (Some((goal, value)), Some(f)) => Some(Target {
                goal,
                value,
                met: match goal {
                    Goal::AtMost => f.median <= value,
                    Goal::AtLeast => f.median >= value,
                },
            }),
            _ => None,
        };
        let mut peer_map = BTreeMap::new();
        let mut ratios = BTreeMap::new();
        for (name, fig) in peers {
            if let Some(fig) = fig {
                if let Some(o) = &ours {
                    if fig.median != 0.0 {
                        ratios.insert(name.to_string(), o.median / fig.median);
                    }
                }
                peer_map.insert(name.to_string(), fig);
            }
        }
        self.rows.push(Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            ours,
            target,
            peers: peer_map,
            ratios,
            note: None,
        });
        self.rows.last_mut().expect("just pushed")
    }

    pub fn skip(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("[bench] skipped: {what}");
        self.skipped.push(what);
    }

    /// The table, as Markdown (also readable in a terminal).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | metric | ours: median [min–max] (n) | target | peers: median (ours/peer) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for r in &self.rows {
            let ours = r.ours.as_ref().map_or("—".to_string(), |f| {
                format!(
                    "{} [{}–{}] ({}) {}",
                    num(f.median),
                    num(f.min),
                    num(f.max),
                    f.n,
                    r.unit
                )
            });
            let target = r.target.as_ref().map_or(String::new(), |t| {
                format!(
                    "{} {} {}: {}",
                    if t.goal == Goal::AtMost { "≤" } else { "≥" },
                    num(t.value),
                    r.unit,
                    if t.met { "met" } else { "MISSED" }
                )
            });
            let peers = r
                .peers
                .iter()
                .map(|(name, f)| {
                    let ratio = r
                        .ratios
                        .get(name)
                        .map_or(String::new(), |x| format!(" ({x:.2})"));
                    format!(
                        "{name}: {} [{}–{}]{ratio}",
                        num(f.median),
                        num(f.min),
                        num(f.max)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let note = r.note.as_ref().map_or(String::new(), |n| format!(" — {n}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {}{} |",
                r.scenario, r.metric, ours, target, peers, note
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nNot measured in this run:");
            for s in &self.skipped {
                let _ = writeln!(out, "- {s}");
            }
        }
        out
    }
}

/// A figure with about three significant digits.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let f = Figure::of(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((f.median, f.min, f.max, f.n), (2.0, 1.0, 3.0, 3));
        let f = Figure::of(&[4.0, 1.0]).unwrap();
        assert_eq!(f.median, 2.5);
        assert!(Figure::of(&[]).is_none());
    }

    #[test]
    fn ratio_and_target() {
        let mut r = Report::default();
        let row = r.row(
            "s",
            "m",
            "ms",
            Figure::of(&[10.0]),
            Some((Goal::AtMost, 5.0)),
            vec![("peer", Figure::of(&[20.0])), ("none", None)],
        );
        assert_eq!(row.ratios["peer"], 0.5);
        assert!(!row.target.as_ref().unwrap().met);
        assert!(!row.peers.contains_key("none"));
    }
}
