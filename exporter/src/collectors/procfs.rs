//! Counters the kernel keeps anyway, read from procfs at scrape time.
//!
//! Where the kernel already aggregates a count (context switches' idle
//! time, page faults, packets and bytes per device), reading its own
//! counter once per scrape costs the host nothing between scrapes, while a
//! program on the event's tracepoint costs every event (about 70 ns on this
//! kind of machine before the program does anything). BPF stays for what
//! only it can see: latencies, drop reasons, per-cgroup attribution.
//!
//! Each file is read whole into a buffer the collector keeps, so a warmed-up
//! scrape allocates nothing here.

use std::{
    fs::File,
    io::{self, Read as _},
    sync::{Mutex, PoisonError},
};

/// A procfs file and the buffer it is read into.
#[derive(Debug)]
pub(crate) struct ProcFile {
    path: &'static str,
    buffer: Mutex<Vec<u8>>,
}

impl ProcFile {
    pub(crate) const fn new(path: &'static str) -> Self {
        Self { path, buffer: Mutex::new(Vec::new()) }
    }

    /// Reads the whole file and hands its contents to `parse`.
    pub(crate) fn read<R>(&self, parse: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.clear();
        File::open(self.path)
            .and_then(|mut file| file.read_to_end(&mut buffer))
            .map_err(|error| io::Error::new(error.kind(), format!("cannot read {}: {error}", self.path)))?;
        Ok(parse(&buffer))
    }
}

/// The lines of `text`.
pub(crate) fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n').filter(|line| !line.is_empty())
}

/// The whitespace-separated fields of `line`.
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace).filter(|field| !field.is_empty())
}

/// A decimal `u64`; `None` for anything else (a sign, an overflow).
pub(crate) fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    field.iter().try_fold(0u64, |value, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The value of `key` in a `key value` file such as `/proc/vmstat`.
pub(crate) fn keyed_value(text: &[u8], key: &[u8]) -> Option<u64> {
    lines(text).find_map(|line| {
        let mut fields = fields(line);
        (fields.next()? == key).then(|| fields.next().and_then(parse_u64)).flatten()
    })
}

/// Kernel clock ticks per second, the unit of `/proc/stat`'s times.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // USER_HZ is 100 on every architecture Linux builds for; a failing
    // sysconf would be a broken libc.
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_keys() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        let vmstat = b"pgfault 123\npgmajfault 4\npgfault_extra 9\n";
        assert_eq!(keyed_value(vmstat, b"pgfault"), Some(123));
        assert_eq!(keyed_value(vmstat, b"pgmajfault"), Some(4));
        assert_eq!(keyed_value(vmstat, b"pgfree"), None);
        assert_eq!(fields(b"  a \t b  ").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
    }

    #[test]
    fn reads_a_real_file_twice_into_one_buffer() {
        let stat = ProcFile::new("/proc/self/stat");
        let first = stat.read(<[u8]>::len).expect("read");
        assert!(first > 0);
        assert!(stat.read(<[u8]>::len).expect("read again") > 0);
        let missing = ProcFile::new("/proc/kernel-exporter-missing");
        let error = missing.read(|_| ()).expect_err("missing file");
        assert!(error.to_string().contains("/proc/kernel-exporter-missing"), "{error}");
    }
}
