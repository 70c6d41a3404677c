//! Pinning the data-plane threads to CPUs (`portico run --pin-workers`), as HAProxy's
//! `cpu-map auto:1/1-N` and nginx's `worker_cpu_affinity auto` do.
//!
//! A data-plane thread that the scheduler moves between CPUs leaves its sockets' cache lines
//! behind, and two of them stacked on one CPU wait for each other while another CPU idles; the
//! latter is what costs most when Portico's threads are a scheduling group of their own (a
//! systemd service's cgroup, or a session under autogroup scheduling) competing with a busy
//! neighbour. Pinned, thread `i` runs on the `i`-th CPU the process may use, so systemd's
//! `CPUAffinity=` (or `taskset`) still decides which CPUs those are.

use std::io;

/// The CPUs this process may run on, ascending: what `CPUAffinity=` or `taskset` left it.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the set's capacity.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The CPU for data-plane thread `worker`: the allowed CPUs in turn, wrapping around when
/// there are more threads than CPUs. `None` only for an empty set.
pub fn for_worker(worker: usize, allowed: &[usize]) -> Option<usize> {
    if allowed.is_empty() {
        return None;
    }
    allowed.get(worker % allowed.len()).copied()
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} is beyond the kernel's cpu_set_t"),
        ));
    }
    // SAFETY: as in `allowed`; `cpu` was checked against the set's capacity; pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_take_the_allowed_cpus_in_turn() {
        let allowed = [2, 3, 6];
        let got: Vec<_> = (0..5).map(|w| for_worker(w, &allowed)).collect();
        assert_eq!(got, [Some(2), Some(3), Some(6), Some(2), Some(3)]);
        assert_eq!(for_worker(0, &[]), None);
    }

    #[test]
    fn this_process_may_run_somewhere() {
        let cpus = allowed().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_cpu_beyond_the_set_is_refused_not_a_panic() {
        let e = pin_current_thread(libc::CPU_SETSIZE as usize).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
