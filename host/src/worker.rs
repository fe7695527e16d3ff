//! Worker threads: each runs its own single-threaded tokio runtime and owns one instance of each
//! plugin it serves. Connections are pinned to the worker they are handed to, so a plugin call
//! never crosses threads and never waits for a lock.
//!
//! This is the thread-per-core model DESIGN.md measured: the same throughput as an instance per
//! connection at a sixth of the memory, and no per-connection instance ceiling.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admitted;
use crate::connection;
use crate::listener::ListenerShared;
use crate::runtime::{PluginInstance, Runtime};

/// An accepted connection on its way to a worker.
pub struct Job {
    /// The socket, detached from the accepting runtime (it is re-registered on the worker's).
    pub stream: std::net::TcpStream,
    /// The connection's place under the listener's limits; released when the connection ends.
    pub admitted: Admitted,
    /// What the listener serves.
    pub listener: Arc<ListenerShared>,
}

/// One worker's plugin instances, one per listener (tenant) it has served.
pub struct Instances {
    runtime: Arc<Runtime>,
    map: RefCell<HashMap<u64, Rc<RefCell<PluginInstance>>>>,
}

impl Instances {
    /// This worker's instance for `listener`, created on first use.
    pub fn get(&self, listener: &ListenerShared) -> Rc<RefCell<PluginInstance>> {
        self.map
            .borrow_mut()
            .entry(listener.id)
            .or_insert_with(|| {
                let limits = listener
                    .limits
                    .instance
                    .unwrap_or_else(|| self.runtime.default_limits());
                Rc::new(RefCell::new(PluginInstance::new(
                    self.runtime.clone(),
                    listener.slot.clone(),
                    listener.ctx.clone(),
                    limits,
                )))
            })
            .clone()
    }

    /// Frees the instance of a listener that stopped accepting once no connection uses it, so
    /// removed tenants do not hold pool slots.
    pub fn release_if_unused(&self, listener: &ListenerShared) {
        if !listener.is_retired() {
            return;
        }
        let mut map = self.map.borrow_mut();
        if map
            .get(&listener.id)
            .is_some_and(|i| Rc::strong_count(i) == 1)
        {
            map.remove(&listener.id);
        }
    }
}

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
        let instances = Rc::new(Instances {
            runtime,
            map: RefCell::new(HashMap::new()),
        });
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
                instances.release_if_unused(&listener);
                if !Arc::ptr_eq(&served, &listener) {
                    instances.release_if_unused(&served);
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    });
}
