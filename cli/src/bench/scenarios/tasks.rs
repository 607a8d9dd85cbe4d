//! The clients of a run as tasks: the [`Progress`] the coordinator watches while they run, and [`join_all`],
//! which collects them.

use std::sync::atomic::{AtomicU64, AtomicUsize};

use tokio::task::JoinSet;

use crate::bench::BenchError;

/// Waits for every task; the first error (or panic) wins.
pub(super) async fn join_all<T: 'static>(mut tasks: JoinSet<Result<T, BenchError>>) -> Result<Vec<T>, BenchError> {
    let mut results = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(value)) => results.push(value),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(BenchError::Task(error.to_string()));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(results),
    }
}

/// What the coordinator sees of the clients while they run.
#[derive(Default)]
pub(super) struct Progress {
    /// New (not duplicate) deliveries so far.
    pub(super) delivered: AtomicU64,
    /// Clients that failed.
    pub(super) failed: AtomicUsize,
}
