//! Thread priorities: work that only explains deliveries yields the CPU to work that makes
//! them.

/// The nice value of background threads: under contention such a thread gets about a
/// tenth of the CPU a default one gets, and all of it when the CPU is otherwise idle.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread to [`BACKGROUND_NICE`]. Threads it starts afterwards inherit
/// the value (Linux keeps nice per thread), which is how a database opened here gets its
/// flush and compaction workers lowered too. A failure is logged and otherwise ignored:
/// the thread then runs at the priority it had.
pub fn background() {
    let thread = Some(rustix::thread::gettid());
    if let Err(error) = rustix::process::setpriority_process(thread, BACKGROUND_NICE) {
        let error = std::io::Error::from(error);
        tracing::warn!(%error, nice = BACKGROUND_NICE, "cannot lower a background thread's priority");
    }
}

/// The calling thread's nice value.
pub fn current() -> std::io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_thread_and_the_threads_it_starts_run_niced() {
        let before = current().unwrap();
        let (own, child) = std::thread::spawn(|| {
            background();
            let child = std::thread::spawn(current).join().unwrap();
            (current().unwrap(), child.unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((own, child), (BACKGROUND_NICE, BACKGROUND_NICE));
        assert_eq!(current().unwrap(), before, "the calling thread keeps its priority");
    }
}
