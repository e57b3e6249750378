//! Counters the kernel keeps anyway, read from procfs at scrape time.
//!
//! Where the kernel already aggregates a count (context switches' idle
//! time, page faults, packets and bytes per device), reading its own
//! counter once per scrape costs the host nothing between scrapes, while a
//! program on the event's tracepoint costs every event (about 70 ns on this
//! kind of machine before the program does anything). BPF stays for what
//! only it can see: latencies, drop reasons, per-cgroup attribution.
//!
//! Each file is opened once and read whole from offset 0 at every scrape
//! (procfs regenerates it on a read from the start), into a buffer the
//! collector keeps: a warmed-up scrape allocates nothing here and spends no
//! path lookup on it.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    sync::{Mutex, PoisonError},
};

/// A procfs file and the buffer it is read into.
#[derive(Debug)]
pub(crate) struct ProcFile {
    path: &'static str,
    state: Mutex<(Option<File>, Vec<u8>)>,
}

impl ProcFile {
    pub(crate) const fn new(path: &'static str) -> Self {
        Self { path, state: Mutex::new((None, Vec::new())) }
    }

    /// Reads the whole file and hands its contents to `parse`.
    pub(crate) fn read<R>(&self, parse: impl FnOnce(&[u8]) -> R) -> io::Result<R> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (file, buffer) = &mut *state;
        let read = read_from_start(file, self.path, buffer);
        if read.is_err() {
            // Reopened at the next scrape.
            *file = None;
        }
        read.map_err(|error| io::Error::new(error.kind(), format!("cannot read {}: {error}", self.path)))?;
        Ok(parse(buffer))
    }
}

/// The whole of `path` into `buffer`, through `file` (opened on first use).
fn read_from_start(file: &mut Option<File>, path: &str, buffer: &mut Vec<u8>) -> io::Result<()> {
    let file = match file {
        Some(file) => file,
        None => file.insert(File::open(path)?),
    };
    buffer.clear();
    loop {
        if buffer.capacity() == buffer.len() {
            buffer.reserve(4096);
        }
        let len = buffer.len();
        let spare = buffer.spare_capacity_mut();
        // SAFETY: `read_at` only writes into the slice; bytes it did not
        // write are never exposed (the length grows by what it read).
        let spare = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len()) };
        let read = file.read_at(spare, len as u64)?;
        if read == 0 {
            return Ok(());
        }
        // SAFETY: `read` bytes past `len` were just written by `read_at`.
        unsafe { buffer.set_len(len + read) };
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
        let first = stat.read(<[u8]>::to_vec).expect("read");
        assert!(first.ends_with(b"\n"), "{first:?}");
        // A second read from the same descriptor sees the file anew.
        let again = stat.read(<[u8]>::to_vec).expect("read again");
        assert_eq!(first.split(|&b| b == b' ').next(), again.split(|&b| b == b' ').next());
        assert!(again.ends_with(b"\n"));
        // Longer than one reservation.
        let long = ProcFile::new("/proc/self/maps");
        assert!(long.read(<[u8]>::len).expect("maps") > 0);
        let missing = ProcFile::new("/proc/kernel-exporter-missing");
        let error = missing.read(|_| ()).expect_err("missing file");
        assert!(error.to_string().contains("/proc/kernel-exporter-missing"), "{error}");
    }
}
