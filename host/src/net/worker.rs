//! Worker threads: each runs its own single-threaded tokio runtime and owns the instances of
//! each plugin it serves ([`Instances`]) — normally one per listener, a few more only while a
//! slow call is suspended. Connections are pinned to the worker they are handed to, so a plugin
//! call never crosses threads and never waits for a lock.
//!
//! This is the thread-per-core model DESIGN.md measured: the same throughput as an instance per
//! connection at a sixth of the memory, and no per-connection instance ceiling.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::connection::{self, Job};
use crate::runtime::Runtime;
use crate::runtime::pool::Instances;

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Open connections on this worker, for least-loaded dispatch.
    load: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The set of worker threads.
pub struct WorkerPool {
    workers: Vec<Worker>,
    /// Cancelled to make the workers stop taking jobs and finish.
    closed: CancellationToken,
}

impl WorkerPool {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize, runtime: Arc<Runtime>) -> Result<Self> {
        let closed = CancellationToken::new();
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let thread = {
                let load = load.clone();
                let runtime = runtime.clone();
                let closed = closed.clone();
                thread::Builder::new()
                    .name(format!("pier-worker-{index}"))
                    .spawn(move || worker_main(index, rx, load, runtime, closed))
                    .context("cannot start a worker thread")?
            };
            workers.push(Worker {
                jobs: tx,
                load,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(WorkerPool { workers, closed })
    }

    /// Hands a connection to the worker with the fewest open connections.
    pub fn dispatch(&self, job: Job) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.load.fetch_add(1, Ordering::Relaxed);
        if worker.jobs.send(job).is_err() {
            worker.load.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a worker thread has stopped; connection dropped");
        }
    }

    /// Connections open on every worker (dispatched and not yet closed).
    pub fn open(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops handing out work and waits for every worker to finish its connections.
    pub fn join(&self) {
        self.closed.cancel();
        for worker in &self.workers {
            let thread = worker
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// Counts a connection against its worker for as long as it lives.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn worker_main(
    index: usize,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    load: Arc<AtomicUsize>,
    runtime: Arc<Runtime>,
    closed: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(worker = index, "cannot start the worker's runtime: {err}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let tracker = TaskTracker::new();
        let instances = Rc::new(Instances::new(runtime));
        loop {
            let job = tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                _ = closed.cancelled() => break,
            };
            let load = load.clone();
            let instances = instances.clone();
            tracker.spawn_local(async move {
                // Decrements even if the task unwinds (tokio contains a task's panic).
                let _load = LoadGuard(load);
                let listener = job.listener.clone();
                let served = connection::serve(job, &instances).await;
                instances.release_if_unused(listener.id, listener.is_retired());
                if !Arc::ptr_eq(&served, &listener) {
                    instances.release_if_unused(served.id, served.is_retired());
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    });
}
