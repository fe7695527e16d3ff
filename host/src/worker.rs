//! Worker threads: each runs its own single-threaded tokio runtime and owns one instance of each
//! plugin it serves. Connections are pinned to the worker they are handed to, so a plugin call
//! never crosses threads and never waits for a lock.
//!
//! This is the thread-per-core model DESIGN.md measured: the same throughput as an instance per
//! connection at a sixth of the memory, and no per-connection instance ceiling.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection;
use crate::listener::ListenerShared;
use crate::runtime::{PluginInstance, Runtime};

/// An accepted connection on its way to a worker.
pub struct Job {
    /// The socket, detached from the accepting runtime (it is re-registered on the worker's).
    pub stream: std::net::TcpStream,
    /// The connection-limit permit taken before `accept`; released when the connection ends.
    pub permit: OwnedSemaphorePermit,
    /// What the listener serves.
    pub listener: Arc<ListenerShared>,
}

/// Tokens every connection watches during shutdown.
#[derive(Clone)]
pub struct Shutdown {
    /// Cancelled to start draining: stop reading new frames, answer what arrived, flush, close.
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passes: drop whatever is left at once.
    pub force: CancellationToken,
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Open connections on this worker, for least-loaded dispatch.
    load: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

/// The set of worker threads.
pub struct WorkerPool {
    workers: Vec<Worker>,
}

impl WorkerPool {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize, runtime: Arc<Runtime>, shutdown: Shutdown) -> Result<Self> {
        let mut workers = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let thread = {
                let load = load.clone();
                let runtime = runtime.clone();
                let shutdown = shutdown.clone();
                thread::Builder::new()
                    .name(format!("pier-worker-{index}"))
                    .spawn(move || worker_main(index, rx, load, runtime, shutdown))
                    .context("cannot start a worker thread")?
            };
            workers.push(Worker {
                jobs: tx,
                load,
                thread,
            });
        }
        Ok(WorkerPool { workers })
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

    /// Stops handing out work and waits for every worker to finish its connections.
    pub fn join(self) {
        let threads: Vec<JoinHandle<()>> = self
            .workers
            .into_iter()
            .map(|w| {
                drop(w.jobs);
                w.thread
            })
            .collect();
        for thread in threads {
            if thread.join().is_err() {
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
    shutdown: Shutdown,
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
        // One instance per listener on this worker.
        let mut instances: HashMap<u64, Rc<RefCell<PluginInstance>>> = HashMap::new();
        while let Some(job) = jobs.recv().await {
            let key = job.listener.id;
            let instance = instances
                .entry(key)
                .or_insert_with(|| {
                    Rc::new(RefCell::new(PluginInstance::new(
                        runtime.clone(),
                        job.listener.plugin.clone(),
                        job.listener.ctx.clone(),
                    )))
                })
                .clone();
            let load = load.clone();
            let shutdown = shutdown.clone();
            tracker.spawn_local(async move {
                // Decrements even if the task unwinds (tokio contains a task's panic).
                let _load = LoadGuard(load);
                connection::serve(job, instance, shutdown).await;
            });
        }
        tracker.close();
        tracker.wait().await;
    });
}
