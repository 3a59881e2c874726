//! Process memory figures for `--timings` and `--json` (Linux `/proc/self/status`; `None` elsewhere).

/// Peak resident set size in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, field)
}

/// `VmHWM:    123456 kB` -> 123456.
fn parse_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut parts = line[field.len()..].split_whitespace();
    let v: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_kib(s, "VmHWM:"), Some(123456));
        assert_eq!(parse_kib(s, "VmRSS:"), Some(1000));
        assert_eq!(parse_kib(s, "VmPeak:"), None);
        if cfg!(target_os = "linux") {
            // The current figure first: other tests in this process allocate concurrently, so a resident size
            // read after the peak can be above it (seen under qemu); the peak read later covers it.
            let rss = rss_bytes().unwrap();
            let peak = peak_rss_bytes().unwrap();
            assert!(peak >= rss && peak > 1 << 20, "peak {peak}, rss {rss}");
        }
    }
}
