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

/// What `/proc` says a process is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessName {
    /// `/proc/PID/comm`: the executable's name, cut to 15 bytes.
    pub comm: String,
    /// Base name of the `/proc/PID/exe` link, when it may be read (it may
    /// not for another user's process).
    pub exe: Option<String>,
}

impl ProcessName {
    /// Whether this is a Cinder server: its executable is called `cinder`.
    /// Either name will do: `comm` can be changed by the process, and `exe`
    /// is unreadable across users.
    pub fn is_cinder(&self) -> bool {
        self.comm == SERVER_NAME || self.exe.as_deref() == Some(SERVER_NAME)
    }
}

/// The executable name of the Cinder server.
pub const SERVER_NAME: &str = "cinder";

/// Reads the name of process `pid`; fails if there is no such process.
pub fn name(pid: u32) -> std::io::Result<ProcessName> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|path| exe_basename(&path.to_string_lossy()));
    Ok(ProcessName {
        comm: comm.trim_end().to_string(),
        exe,
    })
}

/// The file name of an `/proc/PID/exe` target, without the ` (deleted)`
/// the kernel appends once the binary was replaced (as `cargo build` does
/// while a server is running).
fn exe_basename(target: &str) -> Option<String> {
    let target = target.strip_suffix(" (deleted)").unwrap_or(target);
    let base = target.rsplit('/').next()?;
    (!base.is_empty()).then(|| base.to_string())
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

    #[test]
    fn names_processes_and_recognizes_cinder() {
        let me = name(std::process::id()).unwrap();
        assert!(!me.comm.is_empty());
        assert!(!me.is_cinder());
        assert!(name(u32::MAX).is_err());
        let server = |comm: &str, exe: Option<&str>| ProcessName {
            comm: comm.into(),
            exe: exe.map(str::to_string),
        };
        assert!(server("cinder", None).is_cinder());
        assert!(server("renamed", Some("cinder")).is_cinder());
        assert!(!server("cargo", Some("cargo")).is_cinder());
        assert!(!server("cinder-load", Some("cinder-load")).is_cinder());
        assert_eq!(
            exe_basename("/work/target/release/cinder (deleted)").as_deref(),
            Some("cinder")
        );
        assert_eq!(exe_basename("/"), None);
    }
}
