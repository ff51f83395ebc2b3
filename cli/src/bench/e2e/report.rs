//! What `bench e2e` prints: text by default, one JSON object on the last line with `--json`;
//! and whether the run counts (a void ledger exits non-zero, saying "void").

use std::time::Duration;

use serde::Serialize;

use super::{
    find_max::{self, GROWTH_S, Judged, P99_MS, Search},
    ledger::{CutOff, Ledger},
    limits::LimitFigures,
    processes::ProcessPeak,
    step::StepReport,
};
use crate::bench::measure::mib_text;

/// `bench e2e` at one rate.
#[derive(Debug, Serialize)]
pub(super) struct E2eReport {
    benchmark: &'static str,
    storage: String,
    broker: String,
    #[serde(flatten)]
    step: StepReport,
    /// Whether the ledger failed: the figures then mean nothing.
    void: bool,
    peak_rss_mib: Option<f64>,
    /// `--processes`: each service's process, its peak memory and how it stopped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    processes: Vec<ProcessPeak>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_limit_mib: Option<f64>,
}

impl E2eReport {
    pub(super) fn new(
        step: StepReport,
        storage: String,
        broker: String,
        peak_rss_mib: Option<f64>,
    ) -> Self {
        Self {
            benchmark: "e2e",
            storage,
            broker,
            void: step.ledger.void,
            step,
            peak_rss_mib,
            processes: Vec::new(),
            rss_limit_mib: None,
        }
    }

    /// The run's services were `processes`, each to stay under `rss_limit_mib`.
    pub(super) fn with_processes(
        mut self,
        processes: Vec<ProcessPeak>,
        rss_limit_mib: f64,
    ) -> Self {
        self.processes = processes;
        self.rss_limit_mib = Some(rss_limit_mib);
        self
    }

    /// The memory line: this process's peak, and each service's with `--processes`.
    fn memory_text(&self) -> String {
        let mut text = format!("  peak RSS {}", mib_text(self.peak_rss_mib));
        if !self.processes.is_empty() {
            text += " (this process: load and ledger); services, each its own process, with \
                     its CPU time over the whole run:";
            for process in &self.processes {
                text += &format!(
                    " {} {} ({}){}",
                    process.role,
                    mib_text(process.peak_rss_mib),
                    process
                        .cpu_seconds
                        .map_or_else(|| "CPU unknown".to_owned(), |s| format!("{s:.1} s")),
                    if process.clean_exit {
                        ""
                    } else {
                        " (did not stop cleanly)"
                    }
                );
                text += ",";
            }
            text.pop();
        }
        text
    }

    pub(super) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let s = &self.step;
        println!(
            "e2e: {} orders offered at {}/s for {} s on {} + {}\n  \
             placed {} ({} errors{}), {} behind schedule (max {:.1} ms late); cut-off: {}, \
             {:.2} s after the last was offered\n{}{}\n{}\n{}\n{}",
            s.offered,
            s.rate_per_s,
            s.duration_s,
            self.storage,
            self.broker,
            s.placed,
            s.errors,
            refused_text(s),
            s.behind_schedule,
            s.max_behind_ms,
            cut_off_text(s.cut_off),
            s.cut_off_after_s,
            s.hops.to_text(),
            s.cpu.to_text(!self.processes.is_empty()),
            ledger_text(&s.ledger),
            resends_text(&s.ledger),
            self.memory_text(),
        );
        Ok(())
    }

    /// Err when the run is void or not every order was received.
    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        let s = &self.step;
        void_verdict(&s.ledger)?;
        // An order refused at the door was never taken (its caller was told to back off):
        // shed load, not a loss. Every order placed must have been received.
        anyhow::ensure!(
            s.errors == 0,
            "{} of {} placings failed (not refused at the door)",
            s.errors,
            s.offered
        );
        anyhow::ensure!(
            s.ledger.received == s.placed,
            "{} of {} orders placed were not received by the cut-off ({})",
            s.placed - s.ledger.received.min(s.placed),
            s.placed,
            s.ledger.equation()
        );
        if let Some(limit) = self.rss_limit_mib {
            for process in &self.processes {
                let peak = process.peak_rss_mib.unwrap_or(f64::INFINITY);
                anyhow::ensure!(
                    peak <= limit,
                    "the {} process's peak resident set, {}, is over --rss-limit-mib {limit}",
                    process.role,
                    mib_text(process.peak_rss_mib)
                );
            }
        }
        Ok(())
    }
}

/// The calls Orders shed at the door (empty when none): the answer an overloaded Orders
/// gives, not a loss.
fn refused_text(step: &StepReport) -> String {
    if step.refusals == 0 {
        return String::new();
    }
    format!(
        "; Orders shed {} calls at the door: {} orders placed on a retry, {} not placed",
        step.refusals, step.placed_on_retry, step.refused_at_door
    )
}

/// Re-sends over the placed orders (a partner merely behind must not be flooded).
fn resends_text(ledger: &Ledger) -> String {
    let share = if ledger.placed > 0 {
        100.0 * ledger.resends as f64 / ledger.placed as f64
    } else {
        0.0
    };
    format!(
        "  re-sends: {} copies of {} orders ({share:.2} % of the orders placed){}",
        ledger.resends,
        ledger.resent_orders,
        if ledger.answers_checked {
            ""
        } else {
            "; the adapter's answers were not seen (other processes): answered-twice not checked"
        }
    )
}

/// `bench e2e --find-max`.
#[derive(Debug, Serialize)]
pub(super) struct FindMaxReport {
    benchmark: &'static str,
    storage: String,
    broker: String,
    step_seconds: f64,
    /// What a passing step keeps to.
    p99_ms_at_most: f64,
    backlog_growth_s_at_most: f64,
    steps: Vec<Judged>,
    /// The highest passing rate.
    sustainable_per_s: Option<f64>,
    /// Whether a failing step bounds it from above (else it is a lower bound).
    bounded: bool,
    /// Why the search ended before its plan did.
    stopped: Option<String>,
    limits: LimitFigures,
    /// The lower of the two limits.
    lower_limit: Option<&'static str>,
    lower_limit_per_s: Option<f64>,
    /// `sustainable_per_s / lower_limit_per_s`.
    ratio: Option<f64>,
    void: bool,
    peak_rss_mib: Option<f64>,
}

impl FindMaxReport {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        search: &Search,
        steps: Vec<Judged>,
        stopped: Option<String>,
        limits: LimitFigures,
        step: Duration,
        storage: String,
        broker: String,
        peak_rss_mib: Option<f64>,
    ) -> Self {
        let void = steps.iter().any(|s| s.report.ledger.void);
        // A void run has no figure.
        let (sustainable, bounded) = if void { (None, false) } else { search.result() };
        let lower = limits.lower();
        Self {
            benchmark: "e2e-find-max",
            storage,
            broker,
            step_seconds: step.as_secs_f64(),
            p99_ms_at_most: P99_MS,
            backlog_growth_s_at_most: GROWTH_S,
            void,
            steps,
            sustainable_per_s: sustainable,
            bounded,
            stopped,
            lower_limit: lower.map(|(name, _)| name),
            lower_limit_per_s: lower.map(|(_, rate)| rate),
            ratio: sustainable
                .zip(lower)
                .map(|(rate, (_, limit))| rate / limit.max(1e-9)),
            limits,
            peak_rss_mib,
        }
    }

    pub(super) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let mut text = format!(
            "e2e --find-max on {} + {} (a step passes with every order received, p99 scheduled \
             → received ≤ {P99_MS:.0} ms, backlog growth ≤ {GROWTH_S} s of orders)\n",
            self.storage, self.broker
        );
        text += &find_max::table_header(Duration::from_secs_f64(self.step_seconds));
        for step in &self.steps {
            text += &find_max::table_line(step);
            text.push('\n');
        }
        let failed = self
            .steps
            .iter()
            .filter(|s| !s.passed)
            .map(|s| s.report.rate_per_s)
            .reduce(f64::min);
        text += &match (self.sustainable_per_s, failed) {
            _ if self.void => "  sustainable: no figure, the run is VOID (below)\n".to_owned(),
            (Some(rate), Some(failed)) => format!(
                "  sustainable: {rate:.0} orders/s (the highest passing step; {failed:.0}/s failed)\n"
            ),
            (Some(rate), None) => format!(
                "  sustainable: at least {rate:.0} orders/s (no step failed within the plan)\n"
            ),
            (None, _) => "  sustainable: none (no step passed)\n".to_owned(),
        };
        if let Some(stopped) = &self.stopped {
            text += &format!("  stopped early: {stopped}\n");
        }
        text += &limits_text(&self.limits);
        if let (Some(name), Some(ratio)) = (self.lower_limit, self.ratio) {
            text += &format!("  loop / lower limit ({name}): {ratio:.2}\n");
        }
        let void: Vec<&Judged> = self.steps.iter().filter(|s| s.report.ledger.void).collect();
        if void.is_empty() {
            text += "  ledger: balanced in every step\n";
        }
        for step in void {
            text += &format!(
                "  step {}:\n{}\n",
                step.step,
                ledger_text(&step.report.ledger)
            );
        }
        text += &format!("  peak RSS {}", mib_text(self.peak_rss_mib));
        println!("{text}");
        Ok(())
    }

    /// Err when a step is void or none passed.
    pub(super) fn verdict(&self) -> anyhow::Result<()> {
        for step in &self.steps {
            void_verdict(&step.report.ledger)?;
        }
        anyhow::ensure!(self.sustainable_per_s.is_some(), "no step passed");
        Ok(())
    }
}

fn void_verdict(ledger: &Ledger) -> anyhow::Result<()> {
    anyhow::ensure!(
        !ledger.void,
        "void: the ledger does not balance or an order was taken twice ({}; {})",
        ledger.equation(),
        ledger.void_reasons.join("; ")
    );
    Ok(())
}

fn cut_off_text(cut_off: CutOff) -> &'static str {
    match cut_off {
        CutOff::AllConfirmed => "every report confirmed",
        CutOff::Quiet => "the loop went quiet",
        CutOff::Timeout => "the drain timeout",
    }
}

fn ledger_text(ledger: &Ledger) -> String {
    let mut text = format!("  ledger: {}", ledger.equation());
    if ledger.placed_despite_error > 0 {
        text += &format!(
            " ({} more stored although their call failed)",
            ledger.placed_despite_error
        );
    }
    if !ledger.void {
        text += ": balanced";
        return text;
    }
    text += "\n  VOID: the figures above mean nothing";
    for reason in &ledger.void_reasons {
        text += &format!("\n    - {reason}");
    }
    text
}

fn limits_text(limits: &LimitFigures) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"));
    match (limits.bookkeeping, limits.report_raw_per_s) {
        (Some(bookkeeping), Some(report)) => format!(
            "  bare limits, same database, before / after the steps: relay bookkeeping \
             {:.0} orders/s ({} / {}), report raw writes {report:.0}/s ({} / {}); \
             ReportStatus itself {} / {} reports/s\n",
            bookkeeping.orders_per_second,
            rate(limits.bookkeeping_before.map(|r| r.orders_per_second)),
            rate(limits.bookkeeping_after.map(|r| r.orders_per_second)),
            rate(limits.report_raw_before_per_s),
            rate(limits.report_raw_after_per_s),
            rate(limits.report_status_before_per_s),
            rate(limits.report_status_after_per_s),
        ),
        _ => "  bare limits: not measured (both are defined on Postgres: --database-url \
              postgres://…)\n"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: StepReport) -> E2eReport {
        E2eReport::new(step, "Postgres".to_owned(), "Tansu".to_owned(), Some(30.0))
    }

    fn error_of(report: &E2eReport) -> String {
        report
            .verdict()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn every_order_placed_and_received_passes() {
        assert!(
            report(StepReport::for_test(100.0, 1_000, 1_000))
                .verdict()
                .is_ok()
        );
    }

    #[test]
    fn orders_refused_at_the_door_are_shed_load_not_losses() {
        // 40 of 1,000 never taken (their callers told to back off), 25 placed on a retry;
        // every order placed was received.
        let mut step = StepReport::for_test(2_200.0, 1_000, 960);
        step.refused_at_door = 40;
        step.placed_on_retry = 25;
        step.refusals = 130;
        let report = report(step);
        assert!(report.verdict().is_ok(), "{}", error_of(&report));
        assert!(
            refused_text(&report.step).contains(
                "Orders shed 130 calls at the door: 25 orders placed on a retry, 40 not placed"
            ),
            "{}",
            refused_text(&report.step)
        );
    }

    #[test]
    fn a_placing_that_failed_otherwise_fails_the_run() {
        let mut step = StepReport::for_test(100.0, 1_000, 999);
        step.errors = 1;
        let error = error_of(&report(step));
        assert!(
            error.contains("1 of 1000 placings failed (not refused at the door)"),
            "{error}"
        );
    }

    #[test]
    fn a_placed_order_not_received_fails_the_run_even_beside_refusals() {
        let mut step = StepReport::for_test(2_200.0, 1_000, 960);
        step.refused_at_door = 40;
        step.refusals = 40;
        step.ledger.received = 959;
        step.ledger.in_flight = 1;
        let error = error_of(&report(step));
        assert!(
            error.contains("1 of 960 orders placed were not received by the cut-off"),
            "{error}"
        );
    }

    #[test]
    fn a_void_ledger_fails_the_run_first() {
        let mut step = StepReport::for_test(100.0, 1_000, 1_000);
        step.ledger.lost = 1;
        step.ledger.received = 999;
        step.ledger.void = true;
        step.ledger.void_reasons = vec!["order x: placed, never seen again".to_owned()];
        let error = error_of(&report(step));
        assert!(error.starts_with("void:"), "{error}");
        assert!(
            error.contains("order x: placed, never seen again"),
            "{error}"
        );
    }

    #[test]
    fn a_service_over_the_memory_limit_fails_the_run() {
        let peak = |role, mib| ProcessPeak {
            role,
            peak_rss_mib: Some(mib),
            cpu_seconds: Some(1.0),
            clean_exit: true,
        };
        let within = report(StepReport::for_test(100.0, 1_000, 1_000))
            .with_processes(vec![peak("orders", 30.0), peak("partner", 64.0)], 64.0);
        assert!(within.verdict().is_ok(), "{}", error_of(&within));
        let over = report(StepReport::for_test(100.0, 1_000, 1_000))
            .with_processes(vec![peak("orders", 30.0), peak("partner", 64.5)], 64.0);
        let error = error_of(&over);
        assert!(
            error.contains("the partner process's peak resident set"),
            "{error}"
        );
    }
}
