//! `bench e2e --find-max`: the loop's capacity as a figure. The offered rate rises step by
//! step (× `--factor` from `--start-rate`) until a step fails, then a few steps bisect between
//! the highest that passed and the lowest that failed. A step passes when, over `--step-secs`
//! of offering, every order was placed, none ended dead, unroutable or rejected, p99 of
//! scheduled → RECEIVED_BY_PARTNER (an order not received by the cut-off counted at it) is
//! ≤ 1 s, the backlog did not grow (by at most half a second of orders over the step, by its
//! least-squares slope) and cleared within the drain timeout. Each step starts once the
//! previous one's orders are through; a step whose orders did not clear ends the search.

use std::time::Duration;

use serde::Serialize;

use super::step::StepReport;

/// p99 of scheduled → received a passing step keeps to.
pub(super) const P99_MS: f64 = 1_000.0;
/// The most the backlog may grow over a passing step, in seconds of offered orders.
pub(super) const GROWTH_S: f64 = 0.5;
/// Rates closer than this (as a fraction) are not told apart: the search stops.
const RESOLUTION: f64 = 0.05;

/// How to search.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) start: f64,
    pub(super) factor: f64,
    /// Steps after the first failing one.
    pub(super) refine: u32,
    pub(super) max_steps: u32,
}

/// Where the search stands.
#[derive(Debug, Clone)]
pub(super) struct Search {
    plan: Plan,
    passed: Option<f64>,
    failed: Option<f64>,
    refined: u32,
    steps: u32,
}

impl Search {
    pub(super) fn new(plan: Plan) -> Self {
        Self {
            plan,
            passed: None,
            failed: None,
            refined: 0,
            steps: 0,
        }
    }

    /// The next rate to offer, in whole orders a second; `None` when the search is over.
    pub(super) fn next(&self) -> Option<f64> {
        if self.steps >= self.plan.max_steps {
            return None;
        }
        let next = match (self.passed, self.failed) {
            (None, None) => self.plan.start,
            (Some(passed), None) => passed * self.plan.factor,
            (passed, Some(failed)) => {
                let passed = passed.unwrap_or(0.0);
                if self.refined >= self.plan.refine || failed - passed <= failed * RESOLUTION {
                    return None;
                }
                (passed + failed) / 2.0
            }
        };
        let next = next.round().max(1.0);
        let tried = |rate: Option<f64>| rate == Some(next);
        (!tried(self.passed) && !tried(self.failed)).then_some(next)
    }

    /// The step at `rate` passed or not.
    pub(super) fn record(&mut self, rate: f64, passed: bool) {
        self.steps += 1;
        if self.failed.is_some() {
            self.refined += 1;
        }
        if passed {
            self.passed = Some(self.passed.map_or(rate, |p| p.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that passed, and whether a failing one bounds it from above.
    pub(super) fn result(&self) -> (Option<f64>, bool) {
        (self.passed, self.failed.is_some())
    }
}

/// Why a step failed; empty when it passed.
pub(super) fn judge(step: &StepReport) -> Vec<String> {
    let mut failures = Vec::new();
    if step.errors > 0 {
        failures.push(format!("{} PlaceOrder errors", step.errors));
    }
    if step.refusals > 0 {
        failures.push(format!(
            "Orders shed {} calls at the door ({} orders not placed)",
            step.refusals, step.refused_at_door
        ));
    }
    let ledger = &step.ledger;
    if ledger.void {
        failures.push(format!(
            "ledger void ({} lost, {} answered twice, {} received without an answer, {} unknown)",
            ledger.lost, ledger.answered_twice, ledger.received_without_answer, ledger.unknown
        ));
    }
    let stopped =
        ledger.dead + ledger.unroutable + ledger.unacknowledged + ledger.rejected_rerouted;
    if stopped > 0 {
        failures.push(format!(
            "{stopped} orders dead, unroutable, unacknowledged or rejected"
        ));
    }
    if step.to_received_all_ms.p99 > P99_MS {
        failures.push(format!(
            "p99 scheduled → received {:.0} ms > {P99_MS:.0} ms",
            step.to_received_all_ms.p99
        ));
    }
    if step.backlog_growth_s > GROWTH_S {
        failures.push(format!(
            "backlog grew by {:.2} s of orders > {GROWTH_S} s",
            step.backlog_growth_s
        ));
    }
    if ledger.in_flight > 0 {
        failures.push(format!(
            "{} orders still in flight at the cut-off ({:?})",
            ledger.in_flight, step.cut_off
        ));
    }
    failures
}

/// One step as the search saw it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Judged {
    pub(super) step: u32,
    pub(super) passed: bool,
    pub(super) failures: Vec<String>,
    #[serde(flatten)]
    pub(super) report: StepReport,
}

/// A line of the steps' table.
pub(super) fn table_line(judged: &Judged) -> String {
    let r = &judged.report;
    format!(
        "  {:>4} {:>8.0} {:>8} {:>9} {:>9} {:>9.1} {:>9.1} {:>+8.2} s {:>9} {:>6}  {}",
        judged.step,
        r.rate_per_s,
        r.offered,
        r.ledger.received,
        r.ledger.in_flight,
        r.to_received_all_ms.p50,
        r.to_received_all_ms.p99,
        r.backlog_growth_s,
        r.cpu
            .machine_ms_per_order
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
        r.cpu
            .machine_busy
            .map_or_else(|| "-".to_owned(), |busy| format!("{:.0} %", busy * 100.0)),
        if judged.passed {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", judged.failures.join("; "))
        }
    )
}

/// The header of the steps' table.
pub(super) fn table_header(step: Duration) -> String {
    format!(
        "  {:>4} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6}  (steps of {} s; received: p50/p99 ms from the scheduled send; the machine's CPU ms an order and busy share)\n",
        "step",
        "rate/s",
        "offered",
        "received",
        "in flight",
        "p50",
        "p99",
        "backlog",
        "cpu ms",
        "busy",
        step.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            start: 100.0,
            factor: 1.5,
            refine: 3,
            max_steps: 20,
        }
    }

    /// Runs the search against a loop that sustains `capacity`: the rates it offered.
    fn search(plan: Plan, capacity: f64) -> (Vec<f64>, Search) {
        let mut search = Search::new(plan);
        let mut offered = Vec::new();
        while let Some(rate) = search.next() {
            offered.push(rate);
            search.record(rate, rate <= capacity);
        }
        (offered, search)
    }

    #[test]
    fn rises_by_the_factor_until_a_step_fails_then_bisects() {
        let (offered, search) = search(plan(), 300.0);
        assert_eq!(offered, [100.0, 150.0, 225.0, 338.0, 282.0, 310.0, 296.0]);
        assert_eq!(search.result(), (Some(296.0), true));
    }

    #[test]
    fn a_failing_first_step_bisects_below_it() {
        let (offered, search) = search(plan(), 30.0);
        assert_eq!(offered, [100.0, 50.0, 25.0, 38.0]);
        assert_eq!(search.result(), (Some(25.0), true));
    }

    #[test]
    fn stops_at_the_step_budget_unbounded() {
        let (offered, search) = search(
            Plan {
                max_steps: 3,
                ..plan()
            },
            1e9,
        );
        assert_eq!(offered, [100.0, 150.0, 225.0]);
        assert_eq!(search.result(), (Some(225.0), false));
    }

    #[test]
    fn a_step_with_every_order_through_in_time_passes() {
        assert!(judge(&StepReport::for_test(500.0, 5_000, 5_000)).is_empty());
    }

    #[test]
    fn a_step_whose_door_shed_calls_fails_even_when_every_placed_order_came_through() {
        // The loop did not take the rate: Orders turned callers away.
        let mut step = StepReport::for_test(1_500.0, 15_000, 14_990);
        step.refusals = 12;
        step.refused_at_door = 10;
        step.placed_on_retry = 2;
        assert_eq!(
            judge(&step),
            ["Orders shed 12 calls at the door (10 orders not placed)"]
        );
    }

    #[test]
    fn a_step_fails_on_each_of_its_limits() {
        let mut step = StepReport::for_test(800.0, 8_000, 8_000);
        step.to_received_all_ms.p99 = 1_200.0;
        step.backlog_growth_s = 0.75;
        step.ledger.received = 7_990;
        step.ledger.in_flight = 10;
        step.cut_off = crate::bench::e2e::ledger::CutOff::Timeout;
        let failures = judge(&step);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("p99 scheduled → received 1200 ms > 1000 ms"));
        assert!(failures[1].contains("backlog grew by 0.75 s of orders > 0.5 s"));
        assert!(failures[2].contains("10 orders still in flight at the cut-off (Timeout)"));
    }
}
