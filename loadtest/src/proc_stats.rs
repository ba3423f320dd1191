//! CPU time and memory of a process, read from `/proc`.

use std::fs;

/// A reading of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProcSample {
    /// User + system CPU time in nanoseconds (resolution: one clock tick).
    pub cpu_ns: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> std::io::Result<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields after it are
    // counted from its closing parenthesis.
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 2..])
        .ok_or_else(|| std::io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ns = (ticks(11) + ticks(12)) * 1_000_000_000 / hz;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_ns,
        rss_bytes: rss_kb * 1024,
    })
}

/// User + system CPU time of this whole process, in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        let sample = sample(std::process::id()).unwrap();
        assert!(sample.rss_bytes > 0);
        assert!(self_cpu_ns() > 0);
    }
}
