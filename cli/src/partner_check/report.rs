//! Verdicts: what the kit observed, judged against the contract's promises, and the two ways
//! it prints them (a table for people, JSON for CI).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::ingest::{Call, Outcome};

/// Statuses that answer an order (end its handover, or refuse it).
const ANSWERS: &[&str] = &[
    "RECEIVED_BY_PARTNER",
    "REJECTED_BY_PARTNER",
    "SHIPPED",
    "DELIVERED",
    "EXCEPTION",
];

/// One scenario's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The scenario's name.
    pub scenario: &'static str,
    /// `pass` or `fail`.
    pub verdict: &'static str,
    /// The promise the adapter broke, in words (empty when it passed).
    pub broken_promise: String,
    /// What was seen: order ids, counts.
    pub evidence: Vec<String>,
    /// How long the scenario took, in seconds.
    pub seconds: f64,
}

impl Verdict {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }
}

/// Collects the broken promises and the evidence of one scenario.
#[derive(Debug, Default)]
pub struct Findings {
    broken: Vec<String>,
    evidence: Vec<String>,
}

impl Findings {
    /// A promise broken.
    pub fn broke(&mut self, promise: impl Into<String>) {
        let promise = promise.into();
        if !self.broken.contains(&promise) {
            self.broken.push(promise);
        }
    }

    /// A fact worth showing.
    pub fn saw(&mut self, fact: impl Into<String>) {
        self.evidence.push(fact.into());
    }

    /// Whether nothing was broken so far.
    pub fn clean(&self) -> bool {
        self.broken.is_empty()
    }

    /// The verdict of `scenario`.
    pub fn verdict(self, scenario: &'static str, seconds: f64) -> Verdict {
        Verdict {
            scenario,
            verdict: if self.broken.is_empty() {
                "pass"
            } else {
                "fail"
            },
            broken_promise: self.broken.join("; "),
            evidence: self.evidence,
            seconds,
        }
    }
}

/// Whether `calls` answer `order` (a report StatusIngest holds, of an answering status).
pub fn answered(calls: &[Call], order: &str) -> bool {
    calls
        .iter()
        .any(|c| c.order_id == order && c.landed() && ANSWERS.contains(&c.status.as_str()))
}

/// The invariants every scenario checks: one shipment per order (one tracking id, one accepted
/// RECEIVED report id) and a retried report id never changing what it says.
pub fn check_shipments(calls: &[Call], findings: &mut Findings) {
    let mut tracking: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut received_ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut changed: BTreeMap<&str, usize> = BTreeMap::new();
    for call in calls {
        if !call.tracking_id.is_empty() {
            tracking
                .entry(&call.order_id)
                .or_default()
                .insert(&call.tracking_id);
        }
        if call.status == "RECEIVED_BY_PARTNER" && call.outcome == Outcome::Accepted {
            received_ids
                .entry(&call.order_id)
                .or_default()
                .insert(&call.report_id);
        }
        if call.outcome == (Outcome::Duplicate { changed: true }) {
            *changed.entry(&call.report_id).or_default() += 1;
        }
    }
    for (order, ids) in &tracking {
        second_shipment(findings, order, ids, "tracking ids");
    }
    for (order, ids) in &received_ids {
        second_shipment(
            findings,
            order,
            ids,
            "accepted RECEIVED_BY_PARTNER report ids",
        );
    }
    for (report_id, times) in &changed {
        findings.broke("a retried report id said something else than its first copy");
        findings.saw(format!(
            "report {report_id}: sent again {times} time(s) with other content"
        ));
    }
}

/// More than one of `ids` (tracking ids, report ids) for one order: a second shipment.
fn second_shipment(findings: &mut Findings, order: &str, ids: &BTreeSet<&str>, what: &str) {
    if ids.len() > 1 {
        findings.broke("the second delivery created a second shipment");
        findings.saw(format!(
            "order {order}: {} {what} ({})",
            ids.len(),
            ids.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// A count of calls by outcome, for the evidence.
pub fn summary(calls: &[Call]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        let key = match &call.outcome {
            Outcome::Accepted => "accepted".to_owned(),
            Outcome::Duplicate { .. } => "duplicate".to_owned(),
            Outcome::Held => "held".to_owned(),
            Outcome::Refused { code, reason, .. } => match reason {
                Some(reason) => format!("refused {reason}"),
                None => format!("refused {code}"),
            },
        };
        *counts.entry(key).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} ReportStatus calls: {}", calls.len(), parts.join(", "))
}

/// The human table.
pub fn table(verdicts: &[Verdict]) -> String {
    let width = verdicts
        .iter()
        .map(|v| v.scenario.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = format!("{:<width$}  verdict  what broke / evidence\n", "scenario");
    out.push_str(&format!(
        "{}  -------  {}\n",
        "-".repeat(width),
        "-".repeat(40)
    ));
    for verdict in verdicts {
        let first = if verdict.passed() {
            verdict.evidence.first().cloned().unwrap_or_default()
        } else {
            verdict.broken_promise.clone()
        };
        out.push_str(&format!(
            "{:<width$}  {:<7}  {first}\n",
            verdict.scenario,
            verdict.verdict.to_uppercase()
        ));
        let skip = usize::from(verdict.passed());
        let rest = verdict.evidence.iter().skip(skip);
        for line in rest {
            out.push_str(&format!("{:<width$}           {line}\n", ""));
        }
    }
    let failed = verdicts.iter().filter(|v| !v.passed()).count();
    out.push_str(&format!(
        "\n{} of {} scenarios passed{}\n",
        verdicts.len() - failed,
        verdicts.len(),
        if failed == 0 {
            ""
        } else {
            ": not ready to go live"
        }
    ));
    out
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The partner id checked.
    pub partner_id: &'a str,
    /// The seed of the run.
    pub seed: u64,
    /// Whether every scenario passed.
    pub passed: bool,
    /// One entry per scenario, in the order run.
    pub scenarios: &'a [Verdict],
}
