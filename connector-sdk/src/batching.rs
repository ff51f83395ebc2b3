//! Reports to one StatusIngest go out together: every report queued while the calls already on
//! the wire are answered leaves in the next `ReportStatuses` call (at most
//! [`MAX_BATCH_REPORTS`]), so a busy connector makes one call, one HTTP/2 exchange and one
//! hand-off on each side for many reports instead of one each. Nothing waits for a timer: with
//! a place free among [`CALLS_IN_FLIGHT`], a report leaves at once, alone if it is alone.
//!
//! Each report still carries its own token and gets its own answer, converted back into what
//! `ReportStatus` would have answered (the same code, message and retry delay), so the
//! sender's decisions ([`crate::domain::report`]) are the same whichever way a report went. A
//! StatusIngest that does not know `ReportStatuses` (`UNIMPLEMENTED`: older than this SDK) is
//! sent one `ReportStatus` a report from then on.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use prost::Message as _;
use tokio::sync::{Semaphore, oneshot};
use tonic::{Code, Status, transport::Channel};
use waybill_proto::{
    headers::{RETRY_AFTER_MS, TRACEPARENT},
    limits::STATUS_INGEST_MAX_REQUEST_BYTES,
    v1::{
        BatchedReport, ReportResult, ReportStatusRequest, ReportStatusResponse,
        ReportStatusesRequest, status_ingest_client::StatusIngestClient,
    },
};

pub use waybill_proto::limits::MAX_BATCH_REPORTS;
/// The most bytes of reports one call carries: what StatusIngest reads a request, less room
/// for the framing. A report alone always goes, whatever its size.
pub const MAX_BATCH_BYTES: usize = STATUS_INGEST_MAX_REQUEST_BYTES - 4 * 1024;
/// Calls to one StatusIngest on the wire at once; reports that come while they are all out
/// wait for the next.
pub const CALLS_IN_FLIGHT: usize = 2;

type Answer = Result<ReportStatusResponse, Status>;

/// A report waiting for a call, and who waits for its answer.
struct Queued {
    report: BatchedReport,
    answer: oneshot::Sender<Answer>,
}

/// The reports on their way to one StatusIngest address.
pub(crate) struct Batcher {
    client: StatusIngestClient<Channel>,
    queue: Mutex<VecDeque<Queued>>,
    calls: Arc<Semaphore>,
    /// StatusIngest answered `ReportStatuses` with `UNIMPLEMENTED`: one call a report.
    one_by_one: AtomicBool,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("one_by_one", &self.one_by_one.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Reports over `client`'s channel.
    pub fn new(client: StatusIngestClient<Channel>) -> Arc<Self> {
        Arc::new(Self {
            client,
            queue: Mutex::new(VecDeque::new()),
            calls: Arc::new(Semaphore::new(CALLS_IN_FLIGHT)),
            one_by_one: AtomicBool::new(false),
        })
    }

    /// Sends `report` (with its order's `traceparent`) in the next call and returns what
    /// `ReportStatus` would have answered for it.
    pub async fn report(
        self: &Arc<Self>,
        report: ReportStatusRequest,
        traceparent: &str,
    ) -> Answer {
        if self.one_by_one.load(Ordering::Relaxed) {
            return self.one(report, traceparent).await;
        }
        let (answer, answered) = oneshot::channel();
        self.queued().push_back(Queued {
            report: BatchedReport {
                report: Some(report),
                traceparent: traceparent.to_owned(),
                tracestate: String::new(),
            },
            answer,
        });
        self.pump();
        answered
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the report's call ended early")))
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a call with whatever is queued while a place is free. A call that ends frees
    /// its place first and pumps again, so nothing queued is left behind.
    fn pump(self: &Arc<Self>) {
        loop {
            let Ok(place) = Arc::clone(&self.calls).try_acquire_owned() else {
                return;
            };
            let batch = next_batch(&mut self.queued());
            if batch.is_empty() {
                return;
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.call(batch).await;
                drop(place);
                this.pump();
            });
        }
    }

    /// One `ReportStatuses` call for `batch`, each report answered.
    async fn call(&self, batch: Vec<Queued>) {
        let (reports, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.report, queued.answer))
            .unzip();
        let request = ReportStatusesRequest { reports };
        match self.client.clone().report_statuses(request).await {
            Ok(response) => {
                let mut results = response.into_inner().results.into_iter();
                for answer in answers {
                    let result = results.next().map_or_else(
                        || {
                            Err(Status::unavailable(
                                "StatusIngest answered fewer results than reports sent",
                            ))
                        },
                        answer_of,
                    );
                    let _ = answer.send(result);
                }
            }
            // An older StatusIngest: each report is retried at once (a quick retry, asked for
            // here), one call each from now on.
            Err(status) if status.code() == Code::Unimplemented => {
                self.one_by_one.store(true, Ordering::Relaxed);
                for answer in answers {
                    let _ = answer.send(answer_of(ReportResult {
                        code: Code::Unavailable as i32,
                        message: format!(
                            "StatusIngest does not take ReportStatuses ({}); sending each report alone",
                            status.message()
                        ),
                        duplicate: false,
                        retry_after_ms: 1,
                    }));
                }
            }
            // The call as a whole failed (unreachable, refused at the door, past its deadline):
            // so did each of its reports.
            Err(status) => {
                for answer in answers {
                    let _ = answer.send(Err(status.clone()));
                }
            }
        }
    }

    /// One `ReportStatus` call.
    async fn one(&self, report: ReportStatusRequest, traceparent: &str) -> Answer {
        let mut call = tonic::Request::new(report);
        if !traceparent.is_empty()
            && let Ok(value) = traceparent.parse()
        {
            call.metadata_mut().insert(TRACEPARENT, value);
        }
        self.client
            .clone()
            .report_status(call)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The reports at the head of `queue` that go in one call: at least one, at most
/// [`MAX_BATCH_REPORTS`] and [`MAX_BATCH_BYTES`].
fn next_batch(queue: &mut VecDeque<Queued>) -> Vec<Queued> {
    let (mut count, mut bytes) = (0, 0);
    for queued in queue.iter() {
        let size = queued.report.encoded_len() + 8;
        if count == MAX_BATCH_REPORTS || (count > 0 && bytes + size > MAX_BATCH_BYTES) {
            break;
        }
        count += 1;
        bytes += size;
    }
    queue.drain(..count).collect()
}

/// A `ReportStatuses` result as `ReportStatus` would have answered it.
fn answer_of(result: ReportResult) -> Answer {
    let code = Code::from_i32(result.code);
    if code == Code::Ok {
        return Ok(ReportStatusResponse {
            duplicate: result.duplicate,
        });
    }
    let mut status = Status::new(code, result.message);
    if result.retry_after_ms > 0 {
        status.metadata_mut().insert(
            RETRY_AFTER_MS,
            tonic::metadata::MetadataValue::from(result.retry_after_ms),
        );
    }
    Err(status)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response};
    use waybill_proto::v1::{
        GetReportStatsRequest, ReportStats, ReportStatusesResponse,
        status_ingest_server::{StatusIngest, StatusIngestServer},
    };

    use super::*;
    use crate::domain::report::retry_after;

    /// A StatusIngest older than `ReportStatuses`: it answers `UNIMPLEMENTED` there (as
    /// tonic's router does for a method it does not know) and takes every `ReportStatus`.
    #[derive(Default)]
    struct Older {
        singles: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl StatusIngest for Older {
        async fn report_status(
            &self,
            _request: Request<ReportStatusRequest>,
        ) -> Result<Response<ReportStatusResponse>, Status> {
            self.singles.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(ReportStatusResponse { duplicate: false }))
        }

        async fn report_statuses(
            &self,
            _request: Request<ReportStatusesRequest>,
        ) -> Result<Response<ReportStatusesResponse>, Status> {
            Err(Status::unimplemented("Method not found"))
        }

        async fn get_report_stats(
            &self,
            _request: Request<GetReportStatsRequest>,
        ) -> Result<Response<ReportStats>, Status> {
            Err(Status::unimplemented("Method not found"))
        }
    }

    /// A StatusIngest that notes each `ReportStatuses` call's size and holds it until `gate`
    /// lets it go.
    struct Held {
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
    }

    #[tonic::async_trait]
    impl StatusIngest for Held {
        async fn report_status(
            &self,
            _request: Request<ReportStatusRequest>,
        ) -> Result<Response<ReportStatusResponse>, Status> {
            Err(Status::internal("the batch was expected"))
        }

        async fn report_statuses(
            &self,
            request: Request<ReportStatusesRequest>,
        ) -> Result<Response<ReportStatusesResponse>, Status> {
            let count = request.into_inner().reports.len();
            self.sizes.lock().expect("sizes").push(count);
            self.gate.acquire().await.expect("open").forget();
            let results = vec![ReportResult::default(); count];
            Ok(Response::new(ReportStatusesResponse { results }))
        }

        async fn get_report_stats(
            &self,
            _request: Request<GetReportStatsRequest>,
        ) -> Result<Response<ReportStats>, Status> {
            Err(Status::unimplemented("Method not found"))
        }
    }

    async fn serve(service: impl StatusIngest) -> Arc<Batcher> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StatusIngestServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(address)
            .expect("address")
            .connect_lazy();
        Batcher::new(StatusIngestClient::new(channel))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_ready_while_the_calls_are_out_leave_together_in_the_next() {
        let (sizes, gate) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Semaphore::new(0)),
        );
        let batcher = serve(Held {
            sizes: Arc::clone(&sizes),
            gate: Arc::clone(&gate),
        })
        .await;
        let send = |batcher: &Arc<Batcher>| {
            let batcher = Arc::clone(batcher);
            tokio::spawn(async move { batcher.report(ReportStatusRequest::default(), "").await })
        };
        let calls_seen = |n: usize| {
            let sizes = Arc::clone(&sizes);
            async move {
                while sizes.lock().expect("sizes").len() < n {
                    tokio::task::yield_now().await;
                }
            }
        };

        // Alone, each report leaves at once, in a call of its own, until both places are taken.
        let mut answers: Vec<_> = (0..CALLS_IN_FLIGHT).map(|_| send(&batcher)).collect();
        calls_seen(CALLS_IN_FLIGHT).await;
        // Ten more wait for a place, then go in one call.
        answers.extend((0..10).map(|_| send(&batcher)));
        while batcher.queued().len() < 10 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(CALLS_IN_FLIGHT + 1);
        for answer in answers {
            let answer = answer.await.expect("task").expect("taken");
            assert!(!answer.duplicate);
        }
        assert_eq!(*sizes.lock().expect("sizes"), [1, 1, 10]);
    }

    #[tokio::test]
    async fn an_older_status_ingest_is_sent_one_report_a_call() {
        let older = Older::default();
        let singles = Arc::clone(&older.singles);
        let batcher = serve(older).await;

        // The first attempt meets UNIMPLEMENTED: retryable at once (a quick retry asked for).
        let first = batcher
            .report(ReportStatusRequest::default(), "")
            .await
            .expect_err("not taken in a batch");
        assert_eq!(first.code(), Code::Unavailable, "{first:?}");
        assert_eq!(
            retry_after(&first),
            Some(std::time::Duration::from_millis(1))
        );
        assert_eq!(singles.load(Ordering::Relaxed), 0);

        // From then on, one ReportStatus a report.
        for _ in 0..3 {
            let answer = batcher
                .report(ReportStatusRequest::default(), "")
                .await
                .expect("taken one by one");
            assert!(!answer.duplicate);
        }
        assert_eq!(singles.load(Ordering::Relaxed), 3);
    }

    fn queue_of(details: &[usize]) -> VecDeque<Queued> {
        details
            .iter()
            .map(|len| Queued {
                report: BatchedReport {
                    report: Some(ReportStatusRequest {
                        detail: "x".repeat(*len),
                        ..ReportStatusRequest::default()
                    }),
                    ..BatchedReport::default()
                },
                answer: oneshot::channel().0,
            })
            .collect()
    }

    #[test]
    fn a_call_takes_what_is_queued_within_its_count_and_bytes() {
        let mut small = queue_of(&[100; 70]);
        assert_eq!(next_batch(&mut small).len(), MAX_BATCH_REPORTS);
        assert_eq!(next_batch(&mut small).len(), 6);
        assert!(next_batch(&mut small).is_empty());

        // 25 KiB each: two fit the bytes, the third waits for the next call.
        let mut large = queue_of(&[25 * 1024; 3]);
        assert_eq!(next_batch(&mut large).len(), 2);
        assert_eq!(next_batch(&mut large).len(), 1);

        // Larger than a call's bytes on its own: it still goes, alone.
        let mut huge = queue_of(&[MAX_BATCH_BYTES, 10]);
        assert_eq!(next_batch(&mut huge).len(), 1);
        assert_eq!(next_batch(&mut huge).len(), 1);
    }

    #[test]
    fn a_result_reads_as_the_single_call_would_have_answered() {
        let taken = answer_of(ReportResult {
            duplicate: true,
            ..ReportResult::default()
        });
        assert!(taken.expect("taken").duplicate);

        let busy = answer_of(ReportResult {
            code: Code::Unavailable as i32,
            message: "the order's send is being recorded".into(),
            duplicate: false,
            retry_after_ms: 20,
        })
        .expect_err("refused");
        assert_eq!(busy.code(), Code::Unavailable);
        assert_eq!(busy.message(), "the order's send is being recorded");
        assert_eq!(
            retry_after(&busy),
            Some(std::time::Duration::from_millis(20))
        );

        let forged = answer_of(ReportResult {
            code: Code::Unauthenticated as i32,
            message: "bad signature".into(),
            ..ReportResult::default()
        })
        .expect_err("refused");
        assert_eq!(forged.code(), Code::Unauthenticated);
        assert_eq!(retry_after(&forged), None);
    }
}
