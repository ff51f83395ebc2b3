//! Watching an order's steps through the connector, for latency figures (`waybill bench e2e`
//! reports each hop) and for partners who want their own timings: an observer set with
//! [`ConnectorBuilder::observer`](crate::ConnectorBuilder::observer) is told each step as it
//! happens, on the thread that did it. It must return at once (count, timestamp, send on a
//! channel); it is never told anything it could use to change the order's course.

/// A step of one order through the connector, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Its record was read from the partner topic (the poll thread, before any work).
    Consumed,
    /// Its delivery is durable in the inbox (the inbox write committed); the adapter is next.
    Recorded,
    /// The adapter is being called with it (each attempt).
    AdapterCalled,
    /// The adapter answered (accepted or rejected); the answer is not stored yet.
    Answered,
    /// The answer and its report are durable in the inbox.
    AnswerStored,
    /// A report of it is being sent to StatusIngest (each attempt).
    ReportSent,
    /// StatusIngest confirmed a report of it.
    ReportConfirmed,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Consumed,
        Step::Recorded,
        Step::AdapterCalled,
        Step::Answered,
        Step::AnswerStored,
        Step::ReportSent,
        Step::ReportConfirmed,
    ];

    /// A short name (`consumed`, `recorded`, …).
    pub fn name(self) -> &'static str {
        match self {
            Step::Consumed => "consumed",
            Step::Recorded => "recorded",
            Step::AdapterCalled => "adapter_called",
            Step::Answered => "answered",
            Step::AnswerStored => "answer_stored",
            Step::ReportSent => "report_sent",
            Step::ReportConfirmed => "report_confirmed",
        }
    }
}

/// Told of every order's steps (see the module documentation).
pub trait PipelineObserver: Send + Sync + 'static {
    /// `order_id` reached `step` now.
    fn step(&self, order_id: &str, step: Step);
}

/// The connector's observer, if any: one call site per step, free when none is set.
#[derive(Clone, Default)]
pub(crate) struct Observer(Option<std::sync::Arc<dyn PipelineObserver>>);

impl Observer {
    pub fn new(observer: Option<std::sync::Arc<dyn PipelineObserver>>) -> Self {
        Self(observer)
    }

    pub fn step(&self, order_id: &str, step: Step) {
        if let Some(observer) = &self.0 {
            observer.step(order_id, step);
        }
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}
