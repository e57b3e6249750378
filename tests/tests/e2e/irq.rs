//! The `irq` collector against the kernel's own accounting:
//! `/proc/softirqs` per vector and the `intr` line of `/proc/stat`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{Exporter, Metrics, assert_close, promtool_check_metrics};

/// `/proc/softirqs` rows in order, as the exporter names them.
const VECTORS: [&str; 10] =
    ["hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu"];

/// Below this many events in the interval a vector is only checked for
/// consistency: a 5% ratio of a handful is noise.
const RATIO_MIN_EVENTS: u64 = 200;

/// Each row of `/proc/softirqs` summed over the CPU columns, in
/// [`VECTORS`] order.
fn proc_softirqs() -> [u64; 10] {
    let text = fs::read_to_string("/proc/softirqs").expect("read /proc/softirqs");
    VECTORS.map(|vector| {
        text.lines()
            .find_map(|line| {
                let (name, counts) = line.split_once(':')?;
                (name.trim().eq_ignore_ascii_case(vector))
                    .then(|| counts.split_whitespace().map(|n| n.parse::<u64>().expect("a count")).sum())
            })
            .unwrap_or_else(|| panic!("no {vector} row in /proc/softirqs:\n{text}"))
    })
}

/// The `intr` line of `/proc/stat`: the total of all interrupts, and the
/// sum of the per-IRQ-number columns after it (device interrupts, counted
/// per interrupt descriptor).
fn proc_stat_intr() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().find_map(|line| line.strip_prefix("intr ")).expect("intr line in /proc/stat");
    let mut numbers = line.split_whitespace().map(|n| n.parse::<u64>().expect("a count"));
    let total = numbers.next().expect("intr total");
    (total, numbers.sum())
}

/// Pushes `bytes` through a loopback TCP connection: NET_RX softirqs (the
/// loopback device hands every packet to the receive softirq) and TCP's
/// timers.
fn loopback_transfer(bytes: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            match stream.read(&mut buf).expect("read") {
                0 => return total,
                n => total += n,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).expect("connect");
    // Small writes make many packets rather than a few 64 KiB ones.
    let chunk = vec![0x5au8; 1448];
    let mut sent = 0;
    while sent < bytes {
        stream.write_all(&chunk).expect("write");
        sent += chunk.len();
    }
    drop(stream);
    assert_eq!(reader.join().expect("reader thread"), sent);
}

/// Synchronous writes to a file on disk: block I/O completions, each a
/// device interrupt and a BLOCK softirq.
fn synchronous_writes(count: usize) {
    let path = std::env::temp_dir().join(format!("kernel-exporter-e2e-irq-{}", std::process::id()));
    let mut file = fs::File::create(&path).expect("create a temporary file");
    for i in 0..count {
        file.write_all(&[i as u8; 4096]).expect("write");
        file.sync_data().expect("fdatasync");
    }
    drop(file);
    fs::remove_file(&path).expect("remove the temporary file");
}

/// Short sleeps: timer interrupts and the timer softirqs they raise.
fn timers(count: usize) {
    for _ in 0..count {
        thread::sleep(Duration::from_millis(2));
    }
}

fn softirq_counts(metrics: &Metrics, family: &str) -> [f64; 10] {
    VECTORS.map(|vector| metrics.get(&format!("{family}{{vector=\"{vector}\"}}")))
}

#[test]
fn softirqs_and_hardirqs_match_the_kernel() {
    let exporter = Exporter::start(&["--collector.irq"]);

    let softirqs_before = proc_softirqs();
    let (intr_before, device_before) = proc_stat_intr();
    let before = exporter.scrape();
    let started = Instant::now();

    loopback_transfer(32 << 20);
    synchronous_writes(300);
    timers(100);

    let after = exporter.scrape();
    let elapsed = started.elapsed();
    let (intr_after, device_after) = proc_stat_intr();
    let softirqs_after = proc_softirqs();

    let counted_before = softirq_counts(&before, "kernel_softirqs_total");
    let counted_after = softirq_counts(&after, "kernel_softirqs_total");
    let seconds_before = softirq_counts(&before, "kernel_softirq_seconds_total");
    let seconds_after = softirq_counts(&after, "kernel_softirq_seconds_total");
    let mut compared = 0;
    let mut total_seconds = 0.0;
    for (i, vector) in VECTORS.iter().enumerate() {
        let kernel = softirqs_after[i] - softirqs_before[i];
        let counted = counted_after[i] - counted_before[i];
        let seconds = seconds_after[i] - seconds_before[i];
        total_seconds += seconds;
        eprintln!("softirq {vector}: exporter {counted} ({seconds:.6} s), /proc/softirqs {kernel}");
        // The kernel bumps its counter just before the tracepoint fires,
        // and its readings bracket the scrapes, so it can only see more.
        assert!(counted <= kernel as f64, "{vector}: exporter {counted} > /proc/softirqs {kernel}");
        if kernel >= RATIO_MIN_EVENTS {
            assert_close(&format!("softirq {vector}"), counted, kernel as f64, 0.05);
            // Every softirq takes some time; a vector run hundreds of times
            // with none measured would mean exits are not matched.
            assert!(seconds > 0.0, "{vector}: {counted} softirqs took no time");
            compared += 1;
        }
    }
    let net_rx = (softirqs_after[3] - softirqs_before[3]) as f64;
    assert!(net_rx >= RATIO_MIN_EVENTS as f64, "the loopback transfer raised only {net_rx} NET_RX softirqs");
    assert!(compared >= 2, "only {compared} vectors had enough events to compare");
    // Softirq time cannot exceed the time every CPU had in the interval
    // (the scrapes bracket it; /proc/softirqs has no time to compare with).
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(
        total_seconds <= elapsed.as_secs_f64() * cpus,
        "{total_seconds} s of softirqs in {elapsed:?} on {cpus} CPUs"
    );

    let hardirqs = after.get("kernel_hardirqs_total") - before.get("kernel_hardirqs_total");
    let intr = intr_after - intr_before;
    let device = device_after - device_before;
    eprintln!("hardirqs: exporter {hardirqs}, /proc/stat intr total {intr}, of which per-IRQ columns {device}");
    // irq_handler_entry fires for device interrupts, per handler, after the
    // kernel counts the interrupt on its descriptor: the per-IRQ columns of
    // `intr`. Its total adds the CPU's own vectors (local timer,
    // rescheduling and function-call IPIs, TLB shootdowns, NMIs), which
    // never pass that tracepoint and far outnumber device interrupts here.
    assert!(hardirqs <= intr as f64, "exporter {hardirqs} > /proc/stat intr total {intr}");
    assert!(device >= RATIO_MIN_EVENTS, "the synchronous writes raised only {device} device interrupts");
    assert_close("hardirqs vs intr per-IRQ columns", hardirqs, device as f64, 0.05);

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"irq\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}
