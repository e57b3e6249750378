//! `--web.systemd-socket` with sockets handed over the way systemd does
//! (descriptor 3 onwards, `LISTEN_FDS`, `LISTEN_PID`), without systemd: the
//! test owns the listening socket, so it can queue connections on it before
//! the daemon exists. Under a real systemd: `deployment.rs`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
    time::Duration,
};

use kernel_exporter_tests::{Exporter, exporter_binary};

use crate::allowlist::connect_from;

const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A shell that sets `LISTEN_PID` to its own pid and becomes the daemon
/// (as systemd does), dropping its first argument (`Exporter::spawn_command`
/// puts `--web.listen-address` there, which the flag excludes).
const AS_SYSTEMD: &str = "export LISTEN_PID=$$; shift; exec \"$0\" --web.systemd-socket \"$@\"";

/// The daemon with `listener` as descriptor 3.
fn start_with_socket(listener: &TcpListener, args: &[&str]) -> Exporter {
    let mut command = Command::new("/bin/sh");
    command.args(["-c", AS_SYSTEMD]).arg(exporter_binary()).env("LISTEN_FDS", "1");
    as_descriptor_3(&mut command, listener.as_raw_fd());
    let port = listener.local_addr().expect("local address").port();
    Exporter::spawn_command(command, port, args)
}

/// Hands `fd` to the child as descriptor 3, open across exec.
fn as_descriptor_3(command: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; they only copy a
    // descriptor this process owns onto 3 in the child before exec. dup2
    // onto itself keeps close-on-exec, so that case clears it.
    unsafe {
        command.pre_exec(move || {
            let rc = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
}

fn get(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    Ok(raw)
}

#[test]
fn connections_queued_before_the_filter_are_checked_in_userspace() {
    let dir = std::env::temp_dir().join(format!("kernel-exporter-e2e-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the config folder");
    let config = dir.join("web.yml");
    std::fs::write(&config, "allowed_sources: [127.0.0.1/32]\n").expect("write the web config");

    // Listening before the daemon exists, as systemd's socket is: both
    // handshakes complete in the kernel, with no filter on the socket yet.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    let mut queued_allowed = connect_from(ALLOWED, addr, Duration::from_secs(2)).expect("queued from 127.0.0.1");
    let mut queued_stranger = connect_from(STRANGER, addr, Duration::from_secs(2)).expect("queued from 127.0.0.2");

    let exporter = start_with_socket(
        &listener,
        &[&format!("--web.config.file={}", config.display()), "--collector.disable-defaults", "--collector.signal"],
    );
    // The daemon holds its own copy now; a connect would succeed on the
    // kernel's backlog before the daemon runs, so wait for an answer below.
    drop(listener);

    let answer = get(&mut queued_allowed)
        .unwrap_or_else(|error| panic!("the allowed queued connection: {error}; log:\n{}", exporter.log()));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\nlog:\n{}", exporter.log());
    // Reset before any byte is read: the stranger gets nothing, or a reset.
    let answer = get(&mut queued_stranger).unwrap_or_default();
    assert!(answer.is_empty(), "a connection queued from 127.0.0.2 was served:\n{answer}");
    let log = exporter.log();
    assert!(
        log.contains("source=127.0.0.2") && log.contains("queued before the filter"),
        "the refusal is not in the access log:\n{log}"
    );
    assert!(log.contains("listening") && log.contains(&addr.to_string()), "{log}");

    // From now on the kernel drops the stranger's SYNs: no handshake at all.
    let error = connect_from(STRANGER, addr, Duration::from_secs(1)).expect_err("a new connection from 127.0.0.2");
    assert!(matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{error}");
    let mut fresh = connect_from(ALLOWED, addr, Duration::from_secs(2)).expect("127.0.0.1 connects");
    assert!(get(&mut fresh).expect("served").starts_with("HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_socket_activation_environments_fail_in_one_line() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "LISTEN_FDS is not set"),
        (&[("LISTEN_FDS", "two")], "is not a number of sockets from 1 to 64"),
        (&[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")], "names another process"),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(exporter_binary());
        command.args(["--web.systemd-socket", "--collector.disable-defaults", "--collector.signal"]);
        command.env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
        for (name, value) in env {
            command.env(name, value);
        }
        // Nothing on descriptor 3 either: an unopened one is named, not used.
        let out = command.output().expect("run kernel-exporter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|line| line.contains("level=error")).collect();
        assert_eq!(errors.len(), 1, "{env:?}: {stderr}");
        assert!(errors[0].contains(expected), "{env:?}: expected {expected:?} in {stderr}");
    }

    // A socket that is not listening (a UDP one) is named.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", AS_SYSTEMD])
        .arg(exporter_binary())
        .args(["--web.listen-address=dropped", "--collector.disable-defaults", "--collector.signal"])
        .env("LISTEN_FDS", "1");
    as_descriptor_3(&mut command, udp.as_raw_fd());
    let out = command.output().expect("run kernel-exporter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("descriptor 3 from systemd is not a stream (TCP) socket"), "{stderr}");

    // And the flag excludes --web.listen-address, which it replaces.
    let out = Command::new(exporter_binary())
        .args(["--web.systemd-socket", "--web.listen-address=127.0.0.1:1"])
        .output()
        .expect("run kernel-exporter");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
