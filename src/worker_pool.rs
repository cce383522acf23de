//! A fixed set of OS threads, each owning a context (a SQLite connection, or
//! nothing), that run blocking jobs for async callers.
//!
//! SQLite calls and Schnorr checks block for microseconds to milliseconds;
//! running them on tokio's workers would stall every socket on that worker.
//! Each job runs under `catch_unwind`, so a bug in one job fails that job
//! (its caller sees [`PoolError`]) and the thread lives on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use tokio::sync::oneshot;

type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

/// Threads that run closures against their own `C`.
pub struct WorkerPool<C> {
    jobs: crossbeam_channel::Sender<Job<C>>,
}

/// The job did not complete: the pool is shut down or the job panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolError;

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("worker pool job failed")
    }
}

impl std::error::Error for PoolError {}

impl<C: Send + 'static> WorkerPool<C> {
    /// Starts one thread per context. Threads end once the pool is dropped
    /// and the queued jobs are done.
    pub fn start(name: &str, contexts: Vec<C>) -> std::io::Result<WorkerPool<C>> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job<C>>();
        for (index, mut context) in contexts.into_iter().enumerate() {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    for job in queue.iter() {
                        if catch_unwind(AssertUnwindSafe(|| job(&mut context))).is_err() {
                            tracing::error!(
                                pool = "worker",
                                "a job panicked; its caller gets an error"
                            );
                        }
                    }
                })?;
        }
        Ok(WorkerPool { jobs })
    }

    /// Runs `job` on one of the threads and waits for its result.
    pub async fn run<R, F>(&self, job: F) -> Result<R, PoolError>
    where
        F: FnOnce(&mut C) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job<C> = Box::new(move |context| {
            // The caller gave up (its task was aborted or its client left):
            // skip the work instead of doing it for nobody.
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(job(context));
        });
        self.jobs.send(job).map_err(|_| PoolError)?;
        result.await.map_err(|_| PoolError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        let pool = WorkerPool::start("test", vec![0u32]).unwrap();
        assert_eq!(
            pool.run(|n| {
                *n += 1;
                *n
            })
            .await,
            Ok(1)
        );
        assert_eq!(
            pool.run(|_| -> u32 { panic!("boom") }).await,
            Err(PoolError)
        );
        assert_eq!(
            pool.run(|n| {
                *n += 1;
                *n
            })
            .await,
            Ok(2)
        );
    }
}
