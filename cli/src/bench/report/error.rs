//! Why the bench could not run: one error for the bench and its fixture.

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub(super) String);

macro_rules! bench_error_from {
    ($($t:ty),*) => {$(impl From<$t> for BenchError {
        fn from(error: $t) -> Self { Self(error.to_string()) }
    })*};
}
bench_error_from!(sqlx::Error, std::io::Error, tonic::transport::Error);
