//! The bcrypt threads behind basic auth: a few threads of their own in
//! `SCHED_IDLE`, fed by a queue, each answer carrying the CPU time it took
//! (the authenticator's budget is charged by it). Knows nothing of users,
//! caches or limits; `auth` decides what to check.

use std::sync::{Arc, Mutex, PoisonError};

/// A password check for a bcrypt thread: the password, the stored hash,
/// and where the answer goes.
pub(super) struct Job {
    pub(super) password: Vec<u8>,
    pub(super) hash: String,
    /// Whether it matched, and the CPU seconds that took.
    pub(super) answer: tokio::sync::oneshot::Sender<(bool, f64)>,
}

/// The bcrypt threads, started on first use; they end when the
/// `Authenticator` is dropped (the queue's sender with it).
pub(super) struct Workers {
    count: usize,
    queue: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// bcrypt comparisons run so far (`kernel_exporter_password_checks_total`).
    runs: prometheus_client::metrics::counter::Counter,
}

impl Workers {
    /// `count` threads (at least one) once the first job comes.
    pub(super) fn new(count: usize, runs: prometheus_client::metrics::counter::Counter) -> Self {
        Self { count: count.max(1), queue: Mutex::new(None), runs }
    }

    /// bcrypt comparisons run so far.
    #[cfg(test)]
    pub(super) fn runs(&self) -> u64 {
        self.runs.get()
    }

    pub(super) fn submit(&self, job: Job) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = queue.get_or_insert_with(|| self.start());
        // If every thread is gone the job is dropped, and with it the
        // answer's sender: the check fails closed.
        let _ = sender.send(job);
    }

    fn start(&self) -> std::sync::mpsc::Sender<Job> {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..self.count {
            let receiver = Arc::clone(&receiver);
            let runs = self.runs.clone();
            let started = std::thread::Builder::new().name("bcrypt-worker".to_owned()).spawn(move || {
                lower_priority();
                loop {
                    // The lock is held only while waiting for the next job.
                    let next = receiver.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = next else { return };
                    runs.inc();
                    let started = thread_cpu_seconds();
                    let ok = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
                    let cost = thread_cpu_seconds() - started;
                    // The waiter may be gone; the answer is then unused.
                    let _ = job.answer.send((ok, cost));
                }
            });
            if let Err(error) = started {
                tracing::warn!("cannot start a bcrypt thread: {error}");
            }
        }
        sender
    }
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; the thread CPU clock
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Puts the calling thread in `SCHED_IDLE`: it runs only on CPU time no
/// other thread wants, and any other thread that wakes up takes its CPU at
/// once. (At nice 19 a woken scrape may still wait out the bcrypt thread's
/// time slice, a few milliseconds.) A check still completes on a busy host,
/// slowly, and lands in the cache even if its client gave up. Switching to
/// `SCHED_IDLE` needs no privilege; if it fails the checks run at the
/// normal priority.
fn lower_priority() {
    // SAFETY: sched_param is plain integers; all zero is SCHED_IDLE's only
    // valid priority, and zeroing also covers musl's extra (reserved) fields.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: sched_setscheduler reads one sched_param; on Linux pid 0 is
    // the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        tracing::warn!("cannot move the bcrypt thread to SCHED_IDLE: {}", std::io::Error::last_os_error());
    }
}
