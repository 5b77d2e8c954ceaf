//! The process's resident memory, as the kernel counts it (Linux `/proc/self/status`).
//!
//! koala's memory is mostly ONNX Runtime's (sessions, initializers, the arena that holds a
//! step's activations) and the weight, gradient and optimizer buffers; all of it is in the
//! process's resident set, so RSS is the number a user's machine runs out of. These readings
//! back the trainer's per-phase memory line and the benchmarks' peak columns.
//!
//! Units: bytes. Off Linux (no `/proc/self/status`) every reading is `None`.

/// Current resident set size (`VmRSS`), bytes.
pub fn current_rss() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// The process's resident high-water mark so far (`VmHWM`), bytes: what `/usr/bin/time -v`
/// reports as "Maximum resident set size" once the process ends.
pub fn peak_rss() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Resets the high-water mark to the current RSS (writing 5 to `/proc/self/clear_refs`),
/// so the next [`peak_rss`] is the peak of what follows; false where that is not possible.
///
/// This also lowers what `getrusage` and `/usr/bin/time` report for the whole process, so
/// only benchmarks use it; the trainer reports the running high-water mark instead.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Returns the C heap's free pages to the system (glibc's `malloc_trim(0)`); true if any were.
///
/// Memory freed by `free` stays in the process (counted in RSS) until the allocator reuses it;
/// after a phase that freed a lot (the graph build's model copies, a closed session) this
/// lets the kernel take it back, so the next phase's peak is not stacked on it. A no-op
/// returning false off glibc.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes as GiB with one decimal from 1 GiB up, else as whole MiB ("1.3 GiB", "212 MiB").
pub fn gib_or_mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        gib(bytes)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Bytes as GiB with one decimal, the unit of the trainer's memory line ("2.4 GiB").
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, key)
}

/// The value in kB of line `key` of a `/proc/<pid>/status` text.
fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kib_fields_of_a_status_text() {
        let text = "Name:\tkoala\nVmHWM:\t  123456 kB\nVmRSS:\t   65432 kB\n";
        assert_eq!(parse_kib(text, "VmHWM:"), Some(123_456));
        assert_eq!(parse_kib(text, "VmRSS:"), Some(65_432));
        assert_eq!(parse_kib(text, "VmSwap:"), None);
        assert_eq!(gib(3 << 29), "1.5 GiB");
        assert_eq!(gib_or_mib(3 << 29), "1.5 GiB");
        assert_eq!(gib_or_mib(212 << 20), "212 MiB");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_peak_is_at_least_the_current_size_and_grows_with_touched_memory() {
        let before = peak_rss().expect("Linux has /proc/self/status");
        // 64 MiB written page by page must become resident.
        let buf = std::hint::black_box(vec![1u8; 64 << 20]);
        let now = current_rss().unwrap();
        let after = peak_rss().unwrap();
        assert!(after >= now && now >= (64 << 20), "rss {now}, peak {after}");
        assert!(after >= before);
        drop(buf);
    }
}
