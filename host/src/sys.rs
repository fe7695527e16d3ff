//! Process-level helpers every layer may use and that depend on nothing else in pier.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, carrying on if a panic elsewhere poisoned it. Every critical section in pier
/// is a single insert, remove, push, pop or assignment, so the data is consistent either way,
/// and one panicking task must not take every later caller down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
