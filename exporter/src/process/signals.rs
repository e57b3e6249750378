//! Holding signals pending across start-up: a SIGTERM that arrives before
//! the runtime's handlers are in place must end in an orderly exit, not the
//! default action.

/// Blocks `signals` in this thread (and the threads it starts).
pub(crate) fn hold(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is initialised by sigemptyset; the mask
    // calls only read the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for &signal in signals {
            libc::sigaddset(&raw mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

/// Unblocks them in this thread: pending ones are delivered now.
pub(crate) fn release(set: &libc::sigset_t) {
    // SAFETY: reads the set only.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}
