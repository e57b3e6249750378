//! The `block` collector against the kernel's own accounting: the
//! `/proc/diskstats` line of a loop device the test creates and drives with
//! direct I/O, so nothing else touches it.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use kernel_exporter_tests::{Exporter, Metrics, assert_close, promtool_check_metrics};

/// Size of the loop device's backing file.
const BACKING_BYTES: u64 = 64 << 20;
/// I/Os of each size in each direction.
const IOS_PER_SIZE: u64 = 300;
const IO_SIZES: [usize; 2] = [4 << 10, 64 << 10];
/// `LOOP_CTL_ADD` and `LOOP_CTL_REMOVE` from `linux/loop.h`.
const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

/// A file-backed loop device with direct I/O to its backing file,
/// detached (and its backing file deleted) when dropped, test failed or not.
struct LoopDevice {
    dir: PathBuf,
    /// `/dev/loopN`.
    device: PathBuf,
    /// `loopN`, as /proc/diskstats names it.
    name: String,
    /// `N`.
    index: u32,
    attached: bool,
}

impl LoopDevice {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("kernel-exporter-e2e-block-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create a temporary directory");
        let backing = dir.join("backing");
        File::create(&backing).and_then(|file| file.set_len(BACKING_BYTES)).expect("create the backing file");
        let output = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&backing)
            .output()
            .expect("run losetup (util-linux)");
        assert!(output.status.success(), "losetup failed: {}", String::from_utf8_lossy(&output.stderr));
        let device = PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim());
        let name = device.file_name().and_then(|n| n.to_str()).expect("a /dev/loopN path").to_owned();
        let index = name.strip_prefix("loop").and_then(|n| n.parse().ok()).expect("loopN");
        Self { dir, device, name, index, attached: true }
    }

    /// `losetup -d`: the device stays, empty, as `/proc/diskstats` shows.
    fn detach(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.device).status().expect("run losetup -d");
        assert!(status.success(), "losetup -d {} failed", self.device.display());
        self.attached = false;
    }

    /// Removes the (detached) device from the kernel, as `LOOP_CTL_REMOVE`
    /// on `/dev/loop-control` does: it leaves sysfs and `/proc/diskstats`.
    fn remove(&self) {
        for _ in 0..50 {
            if loop_control(LOOP_CTL_REMOVE, self.index).is_ok() {
                return;
            }
            // Busy while the detach's last references drain.
            thread::sleep(Duration::from_millis(20));
        }
        panic!("LOOP_CTL_REMOVE of {}: {:?}", self.name, loop_control(LOOP_CTL_REMOVE, self.index));
    }

    /// Adds the removed device back, empty, so the host keeps its loop
    /// devices (a fresh device under the old number).
    fn add_back(&self) {
        if let Err(error) = loop_control(LOOP_CTL_ADD, self.index) {
            eprintln!("cannot add {} back: {error}", self.name);
        }
    }
}

/// An ioctl on `/dev/loop-control` with a device index.
fn loop_control(request: libc::c_ulong, index: u32) -> std::io::Result<()> {
    let control = File::open("/dev/loop-control")?;
    // SAFETY: ioctl on a file we own with an integer argument.
    let result = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&control), request, libc::c_ulong::from(index)) };
    if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if self.attached {
            let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The counts of one `/proc/diskstats` line: reads completed, bytes read,
/// writes completed, bytes written.
#[derive(Debug, Clone, Copy)]
struct DiskStats {
    reads: u64,
    read_bytes: u64,
    writes: u64,
    written_bytes: u64,
}

fn diskstats(name: &str) -> Option<DiskStats> {
    let text = fs::read_to_string("/proc/diskstats").expect("read /proc/diskstats");
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&name)).then(|| {
            let field = |i: usize| fields[i].parse::<u64>().expect("a count");
            // Fields after the name: reads, reads merged, sectors read, ms
            // reading, writes, writes merged, sectors written, ...
            DiskStats { reads: field(3), read_bytes: field(5) * 512, writes: field(7), written_bytes: field(9) * 512 }
        })
    })
}

/// A sample, 0 when the series does not exist (yet).
fn value(metrics: &Metrics, family: &str, device: &str, op: &str) -> f64 {
    metrics.samples.get(&format!("{family}{{device=\"{device}\",op=\"{op}\"}}")).copied().unwrap_or(0.0)
}

/// Whether any series of `device` is in the scrape.
fn has_device(metrics: &Metrics, device: &str) -> bool {
    let label = format!("device=\"{device}\"");
    metrics.samples.keys().any(|key| key.contains(&label))
}

/// The `(dev, op)` keys of the `BLOCK_IO` map of the exporter with
/// process id `pid` (the maps it holds open, by id, in its fdinfo).
fn block_io_keys(pid: u32) -> Vec<[u32; 2]> {
    let held: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("read the exporter's fdinfo")
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|line| line.strip_prefix("map_id:")?.trim().parse().ok()))
        .collect();
    let info = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .find(|map| held.contains(&map.id()) && map.name_as_str() == Some("BLOCK_IO"))
        .expect("the exporter holds a BLOCK_IO map");
    let data = aya::maps::MapData::from_id(info.id()).expect("open BLOCK_IO by id");
    // Value: requests, bytes and a 42-bucket histogram with its sum
    // (exporter_common::histogram::LOG2_BUCKETS).
    let map: aya::maps::PerCpuHashMap<_, [u32; 2], [u64; 45]> =
        aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data)).expect("BLOCK_IO's layout");
    map.keys().collect::<Result<_, _>>().expect("walk BLOCK_IO")
}

/// `IOS_PER_SIZE` direct writes and then as many direct reads of each of
/// [`IO_SIZES`], spread over the device; returns the bytes moved each way.
fn direct_io(device: &Path) -> u64 {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .expect("open the loop device with O_DIRECT");
    // O_DIRECT needs a buffer aligned to the logical block size; 4 KiB
    // covers every block size.
    let mut storage = vec![0x5au8; IO_SIZES[1] + 4096];
    let start = storage.as_ptr().align_offset(4096);
    let mut bytes = 0;
    for write in [true, false] {
        for size in IO_SIZES {
            let buf = &mut storage[start..start + size];
            for i in 0..IOS_PER_SIZE {
                let offset = (i * size as u64 * 3) % (BACKING_BYTES - size as u64) / 4096 * 4096;
                let done =
                    if write { file.write_at(buf, offset) } else { file.read_at(buf, offset) }.expect("direct I/O");
                assert_eq!(done, size, "short direct I/O");
                if write {
                    bytes += size as u64;
                }
            }
        }
    }
    bytes
}

#[test]
fn block_requests_and_bytes_match_diskstats() {
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.block"]);
    let excluding = Exporter::start(&[
        "--collector.disable-defaults",
        "--collector.block",
        "--collector.block.device-exclude=^loop",
    ]);
    let mut device = LoopDevice::create();
    let name = device.name.clone();
    let rdev = fs::metadata(&device.device).expect("stat the loop device").rdev();
    eprintln!("{} is {}:{}", device.device.display(), libc::major(rdev), libc::minor(rdev));

    let kernel_before = diskstats(&name).expect("the loop device in /proc/diskstats");
    let before = exporter.scrape();
    let bytes_each_way = direct_io(&device.device);
    let after = exporter.scrape();
    let kernel_after = diskstats(&name).expect("the loop device in /proc/diskstats");
    let excluded = excluding.scrape();

    let delta = |metrics: (&Metrics, &Metrics), family: &str, op: &str| {
        value(metrics.1, family, &name, op) - value(metrics.0, family, &name, op)
    };
    let scrapes = (&before, &after);
    let kernel = [
        ("read", kernel_after.reads - kernel_before.reads, kernel_after.read_bytes - kernel_before.read_bytes),
        ("write", kernel_after.writes - kernel_before.writes, kernel_after.written_bytes - kernel_before.written_bytes),
    ];
    for (op, kernel_requests, kernel_bytes) in kernel {
        let requests = delta(scrapes, "kernel_block_io_requests_total", op);
        let bytes = delta(scrapes, "kernel_block_io_bytes_total", op);
        let timed = delta(scrapes, "kernel_block_io_latency_seconds_count", op);
        let seconds = delta(scrapes, "kernel_block_io_latency_seconds_sum", op);
        eprintln!(
            "{name} {op}: exporter {requests} requests, {bytes} bytes, {timed} timed ({seconds:.6} s); \
             /proc/diskstats {kernel_requests} requests, {kernel_bytes} bytes"
        );
        // The test itself moved this much; diskstats must agree before
        // the comparison means anything.
        assert!(kernel_bytes >= bytes_each_way, "{op}: /proc/diskstats saw {kernel_bytes} bytes of {bytes_each_way}");
        assert!(kernel_requests >= IOS_PER_SIZE * 2, "{op}: /proc/diskstats saw {kernel_requests} requests");
        assert_close(&format!("{name} {op} requests"), requests, kernel_requests as f64, 0.05);
        assert_close(&format!("{name} {op} bytes"), bytes, kernel_bytes as f64, 0.05);
        // Every request was issued after the programs attached, so every
        // completed request was timed: the histogram counts them all.
        assert_eq!(timed, requests, "{op}: timed requests vs completed requests");
        assert!(seconds > 0.0, "{op}: {timed} requests took no time");
    }
    assert_eq!(value(&after, "kernel_block_io_requests_total", &name, "discard"), 0.0);

    // The same interval through an exporter that excludes loop devices.
    assert!(!has_device(&excluded, &name), "--collector.block.device-exclude=^loop shows {name}:\n{}", excluded.text);
    assert!(excluded.text.contains("# TYPE kernel_block_io_requests_total counter"), "{}", excluded.text);
    assert_eq!(excluded.get("kernel_exporter_collector_up{collector=\"block\"}"), 1.0);

    // Detached, the device still exists (empty, still in
    // /proc/diskstats), and so do its series.
    device.detach();
    assert!(diskstats(&name).is_some(), "{name} left /proc/diskstats on detach");
    assert!(has_device(&exporter.scrape(), &name), "{name} vanished on detach");
    // Removed, it is gone from the kernel, and from the next scrape.
    device.remove();
    assert!(diskstats(&name).is_none(), "{name} still in /proc/diskstats after LOOP_CTL_REMOVE");
    let gone = exporter.scrape();
    assert!(!has_device(&gone, &name), "{name} is gone but still exported:\n{}", gone.text);
    // Its counts were deleted from the kernel's map, not just hidden, so
    // device churn cannot fill the map.
    let dev = (libc::major(rdev) << 20) | libc::minor(rdev);
    let keys = block_io_keys(exporter.pid());
    assert!(!keys.is_empty(), "the exporter's BLOCK_IO map is empty");
    assert!(keys.iter().all(|[key_dev, _]| *key_dev != dev), "keys of {name} remain: {keys:?}");
    device.add_back();

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"block\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}

/// The disk holding `path` (the whole disk when it is on a partition), as
/// `/proc/diskstats` names it.
fn disk_of(path: &Path) -> String {
    let dev = fs::metadata(path).expect("stat").dev();
    let sys = fs::canonicalize(format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)))
        .expect("the file system's block device in sysfs");
    let disk = if sys.join("partition").exists() { sys.parent().expect("the partition's disk") } else { &sys };
    disk.file_name().and_then(|name| name.to_str()).expect("a disk name").to_owned()
}

/// fsync after each small write: on a disk with a volatile write cache
/// and no FUA (virtio disks, most SATA drives) the journal commits go
/// through the kernel's flush sequence, which completes a write twice (its
/// data, then its end) and sends flushes of its own: the writes and
/// flushes must still be counted once each, as /proc/diskstats counts them.
#[test]
fn fsync_writes_and_flushes_match_diskstats() {
    let dir = std::env::temp_dir();
    let disk = disk_of(&dir);
    let cache = fs::read_to_string(format!("/sys/block/{disk}/queue/write_cache")).unwrap_or_default();
    let fua = fs::read_to_string(format!("/sys/block/{disk}/queue/fua")).unwrap_or_default();
    eprintln!("{disk}: write cache {}, fua {}", cache.trim(), fua.trim());
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.block"]);
    let path = dir.join(format!("kernel-exporter-e2e-block-fsync-{}", std::process::id()));

    // Other processes' I/O to the disk lands in both views; diskstats,
    // read outside the scrapes, can only see more.
    let kernel_before = diskstats(&disk).expect("the disk in /proc/diskstats");
    let flushes_before = diskstat_flushes(&disk);
    let before = exporter.scrape();
    {
        let mut file = File::create(&path).expect("create a temporary file");
        for i in 0..IOS_PER_SIZE {
            std::io::Write::write_all(&mut file, &[i as u8; 4096]).expect("write");
            file.sync_all().expect("fsync");
        }
    }
    fs::remove_file(&path).expect("remove the temporary file");
    let after = exporter.scrape();
    let flushes_after = diskstat_flushes(&disk);
    let kernel_after = diskstats(&disk).expect("the disk in /proc/diskstats");

    let writes = value(&after, "kernel_block_io_requests_total", &disk, "write")
        - value(&before, "kernel_block_io_requests_total", &disk, "write");
    let flushes = value(&after, "kernel_block_io_requests_total", &disk, "flush")
        - value(&before, "kernel_block_io_requests_total", &disk, "flush");
    let kernel_writes = kernel_after.writes - kernel_before.writes;
    let kernel_flushes = flushes_after - flushes_before;
    eprintln!(
        "{disk}: exporter {writes} writes, {flushes} flushes; /proc/diskstats {kernel_writes} writes, {kernel_flushes} flushes"
    );
    assert!(kernel_writes >= IOS_PER_SIZE, "{disk}: /proc/diskstats saw {kernel_writes} writes");
    assert!(writes <= kernel_writes as f64, "{disk}: exporter {writes} writes > /proc/diskstats {kernel_writes}");
    assert_close(&format!("{disk} writes"), writes, kernel_writes as f64, 0.05);
    // A disk without a volatile cache gets no flushes (the kernel drops
    // them): then both must say none.
    if cache.trim() == "write back" {
        assert!(kernel_flushes >= IOS_PER_SIZE, "{disk}: /proc/diskstats saw {kernel_flushes} flushes");
        assert_close(&format!("{disk} flushes"), flushes, kernel_flushes as f64, 0.05);
    } else {
        assert_eq!((flushes, kernel_flushes), (0.0, 0), "{disk}: flushes without a write-back cache");
    }
}

/// Flush requests completed (the 16th count of a `/proc/diskstats` line,
/// after the device name).
fn diskstat_flushes(name: &str) -> u64 {
    let text = fs::read_to_string("/proc/diskstats").expect("read /proc/diskstats");
    text.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&name)).then(|| fields.get(18)?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no flush count for {name} in /proc/diskstats"))
}

#[test]
fn a_full_map_counts_and_logs_the_updates_it_refuses() {
    // BLOCK_IO gets room for one (disk, operation) key: the loop device's
    // writes and reads need two, so the second kind is refused by the
    // kernel, and the program must say so rather than lose it silently.
    let mut command = Command::new(kernel_exporter_tests::exporter_binary());
    command.env("KERNEL_EXPORTER_TEST_MAP_MAX_ENTRIES", "BLOCK_IO=1");
    let exporter = Exporter::spawn_command(
        command,
        kernel_exporter_tests::free_port(),
        &["--collector.disable-defaults", "--collector.block"],
    );
    exporter.wait_until_listening();
    let device = LoopDevice::create();
    direct_io(&device.device);
    let failures = "kernel_exporter_bpf_map_update_failures_total{map=\"BLOCK_IO\"}";
    let mut metrics = exporter.scrape();
    for _ in 0..50 {
        if metrics.get(failures) > 0.0 && exporter.log().contains("BPF map BLOCK_IO") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        metrics = exporter.scrape();
    }
    assert!(metrics.get(failures) >= 1.0, "no failed update counted:\n{}", metrics.text);
    // Every other map the programs add to is reported, at zero.
    assert_eq!(metrics.get("kernel_exporter_bpf_map_update_failures_total{map=\"TCP_CONNECT_STARTS\"}"), 0.0);
    let log = exporter.log();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("BPF map BLOCK_IO")).collect();
    assert!(!lines.is_empty(), "no log line for the refused update:\n{log}");
    assert!(lines[0].contains("cannot add a disk and operation to BPF map BLOCK_IO: error -7"), "{}", lines[0]);
    assert!(lines[0].contains("level=warn"), "{}", lines[0]);
    // Rate-limited: hundreds of refused completions, a handful of lines.
    assert!(lines.len() <= 12, "{} lines for one full map:\n{log}", lines.len());
}
