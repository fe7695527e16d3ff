//! Process-level helpers every layer may use and that depend on nothing else in pier: a
//! poison-tolerant lock and the open-file limit.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, carrying on if a panic elsewhere poisoned it. Every critical section in pier
/// is a single insert, remove, push, pop or assignment, so the data is consistent either way,
/// and one panicking task must not take every later caller down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises this process's open-file limit to its hard limit: servers and load generators both
/// need one descriptor per connection.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
