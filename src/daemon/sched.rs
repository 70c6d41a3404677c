//! The data-plane threads' scheduling policy (`portico run --worker-scheduling`).
//!
//! A data-plane thread is an event loop: woken by a socket, it moves what is ready on every
//! connection it owns and sleeps again. Under the default policy (`SCHED_OTHER`) a wake-up
//! preempts whatever runs on that CPU, so when the CPUs are contended (the backends' and
//! clients' work on the same host, or any neighbour) the thread runs as soon as one event
//! arrives, handles it alone and sleeps: a context switch per few messages, for it and for
//! the task it displaced. `SCHED_BATCH` is the same fair share without wake-up preemption: the
//! woken thread runs when the CPU frees up or at the next tick, with every event that arrived
//! meanwhile. It changes nothing on an idle CPU and needs no privilege. Measured in
//! `docs/benchmarks.md` (session 6): where Portico is a scheduling group of its own, as a
//! systemd service is, it handled 12 % more keep-alive requests per second (five alternating
//! rounds, more in each) at up to 20 % less CPU per request; the new-connection rate did not
//! move, nor did keep-alive where Portico shares a scheduling group with its load.
//!
//! The control plane (VRRP adverts, probes, DNS, admin) keeps the default policy: an advert
//! late by a tick matters more there than a batch saved.

use std::io;
use std::str::FromStr;

/// The policy for the data-plane threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerScheduling {
    /// `SCHED_BATCH`: fair share, no wake-up preemption (`portico run`'s default).
    Batch,
    /// `SCHED_OTHER`: the kernel's default, left as the thread started.
    Normal,
}

impl WorkerScheduling {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerScheduling::Batch => "batch",
            WorkerScheduling::Normal => "normal",
        }
    }

    /// The `sched_setscheduler(2)` policy, `None` for "leave the thread as it is".
    fn policy(self) -> Option<libc::c_int> {
        match self {
            WorkerScheduling::Batch => Some(libc::SCHED_BATCH),
            WorkerScheduling::Normal => None,
        }
    }
}

impl FromStr for WorkerScheduling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(WorkerScheduling::Batch),
            "normal" | "other" => Ok(WorkerScheduling::Normal),
            _ => Err(format!("`{s}`: expected `batch` or `normal`")),
        }
    }
}

impl std::fmt::Display for WorkerScheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Applies `policy` to the calling thread (Linux scheduling policies are per thread).
/// `Ok(false)` when there was nothing to do.
pub fn apply_to_current_thread(policy: WorkerScheduling) -> io::Result<bool> {
    let Some(p) = policy.policy() else {
        return Ok(false);
    };
    // Non-real-time policies take priority 0.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, p, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy, as `sched_getscheduler(2)` returns it.
    fn current_policy() -> io::Result<libc::c_int> {
        // SAFETY: no pointers; pid 0 is the calling thread.
        let p = unsafe { libc::sched_getscheduler(0) };
        if p < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(p)
    }

    #[test]
    fn names_parse_and_print_back() {
        for p in [WorkerScheduling::Batch, WorkerScheduling::Normal] {
            assert_eq!(p.as_str().parse::<WorkerScheduling>(), Ok(p));
        }
        assert_eq!("other".parse(), Ok(WorkerScheduling::Normal));
        let e = "fifo".parse::<WorkerScheduling>().unwrap_err();
        assert!(e.contains("fifo") && e.contains("batch"), "{e}");
    }

    #[test]
    fn batch_is_applied_to_the_calling_thread_only() {
        let (in_thread, after) = std::thread::spawn(|| {
            let applied = apply_to_current_thread(WorkerScheduling::Batch).expect("SCHED_BATCH");
            (applied, current_policy().unwrap())
        })
        .join()
        .unwrap();
        assert!(in_thread);
        assert_eq!(after, libc::SCHED_BATCH);
        assert_eq!(current_policy().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn normal_leaves_the_thread_alone() {
        let r = std::thread::spawn(|| {
            (
                apply_to_current_thread(WorkerScheduling::Normal).unwrap(),
                current_policy().unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(r, (false, libc::SCHED_OTHER));
    }
}
