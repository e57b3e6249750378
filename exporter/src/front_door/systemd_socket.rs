//! `--web.systemd-socket` (exporter-toolkit's flag): listen on the sockets
//! systemd passes (socket activation, `sd_listen_fds(3)`) instead of
//! binding `--web.listen-address`.
//!
//! systemd sets `LISTEN_PID` (the process meant to take them) and
//! `LISTEN_FDS` (how many), and the sockets are descriptors 3, 4, …. Each
//! must be a listening TCP socket of IPv4 or IPv6; anything else (a UNIX or
//! datagram socket from a misconfigured `.socket` unit) fails start-up with
//! one line naming the descriptor.
//!
//! Unlike a socket this daemon binds, an inherited socket was listening
//! before the allowlist filter could be attached: connections that
//! completed their handshake in the meantime (the one that activated the
//! service, or any queued while the daemon was down, which passed only the
//! filter of a previous instance, with that instance's allowlist) sit in
//! the accept queue unfiltered. The kernel cannot tell those apart from the
//! ones that came after, so every connection accepted on an inherited socket
//! is also checked against the allowlist in force, in userspace
//! ([`super::listener::SourceCheck::AlsoInUserspace`]). That costs a scan of
//! the allowlist per connection, nothing next to the TLS handshake, and it
//! holds whatever the timing.

use std::{
    env, io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use super::listener::{ListenAddress, Listener, SourceCheck};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// More than any `.socket` unit of ours names; a larger `LISTEN_FDS` is a
/// corrupted environment, not a configuration.
const MAX_SOCKETS: usize = 64;

/// Why the systemd sockets cannot be used; each is fatal at start-up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SystemdSocketError {
    #[error(
        "--web.systemd-socket: LISTEN_FDS is not set, so systemd passed no socket; start the service through its \
         .socket unit (systemctl start kernel-exporter.socket), or drop the flag and use --web.listen-address"
    )]
    NotActivated,
    #[error("--web.systemd-socket: {variable}={value:?} is not a {expected}")]
    Malformed { variable: &'static str, value: String, expected: &'static str },
    #[error(
        "--web.systemd-socket: LISTEN_PID={listen_pid} names another process than this one ({own_pid}); the \
         sockets were meant for it"
    )]
    OtherProcess { listen_pid: u32, own_pid: u32 },
    #[error(
        "--web.systemd-socket: descriptor {fd} from systemd {problem}; the .socket unit must use ListenStream= with an IP address and port"
    )]
    NotTcpListener { fd: RawFd, problem: String },
    #[error(
        "--web.systemd-socket: cannot attach the allowlist socket filter (SO_ATTACH_BPF) to descriptor {fd} ({address}): {source}"
    )]
    Attach {
        fd: RawFd,
        address: ListenAddress,
        #[source]
        source: io::Error,
    },
}

/// The listening sockets systemd passed, checked but not yet filtered.
#[derive(Debug)]
pub(crate) struct Inherited {
    sockets: Vec<(ListenAddress, OwnedFd)>,
}

impl Inherited {
    /// Takes the sockets systemd passed to this process. Reads the
    /// environment once and removes `LISTEN_*` from it (as
    /// `sd_listen_fds(1)` does), so nothing started later mistakes them for
    /// its own; the descriptors are marked close-on-exec.
    pub(crate) fn take() -> Result<Self, SystemdSocketError> {
        let variables = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].map(|name| env::var(name).ok());
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: called during start-up from the only thread: nothing
            // reads the environment concurrently.
            unsafe { env::remove_var(name) };
        }
        let [listen_pid, listen_fds, _names] = variables;
        let count = parse_environment(listen_pid.as_deref(), listen_fds.as_deref(), std::process::id())?;
        let mut sockets = Vec::with_capacity(count);
        for fd in (LISTEN_FDS_START..).take(count) {
            // Not inherited by anything this process might execute; and an
            // error here means it is not open, so it must not be owned (an
            // owner would close it).
            // SAFETY: fcntl with integer arguments only.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                let problem = format!("is not open ({})", io::Error::last_os_error());
                return Err(SystemdSocketError::NotTcpListener { fd, problem });
            }
            // SAFETY: the descriptor is open (above), and systemd passed
            // descriptors LISTEN_FDS_START .. +count to this process
            // (LISTEN_PID checked above) for it alone to own; nothing else in
            // the process has touched them.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let address = check_listening_tcp(&owned)?;
            sockets.push((address, owned));
        }
        Ok(Self { sockets })
    }

    /// Where the sockets listen, for the exposure check and the log.
    pub(crate) fn addresses(&self) -> Vec<ListenAddress> {
        self.sockets.iter().map(|(address, _)| *address).collect()
    }

    /// Attaches the allowlist socket filter to every socket (replacing the
    /// filter a previous instance left on it) and hands them to the server,
    /// which also checks the sources of connections queued before this.
    pub(crate) fn attach(self, filter: std::os::fd::BorrowedFd<'_>) -> Result<Vec<Listener>, SystemdSocketError> {
        self.sockets
            .into_iter()
            .map(|(address, fd)| {
                let raw = fd.as_raw_fd();
                let attach_error = |source| SystemdSocketError::Attach { fd: raw, address, source };
                super::listener::attach_filter(raw, filter).map_err(attach_error)?;
                let socket = std::net::TcpListener::from(fd);
                socket.set_nonblocking(true).map_err(attach_error)?;
                Ok(Listener { address, socket, source_check: SourceCheck::AlsoInUserspace })
            })
            .collect()
    }
}

/// How many sockets `LISTEN_PID` and `LISTEN_FDS` announce to `own_pid`.
fn parse_environment(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    own_pid: u32,
) -> Result<usize, SystemdSocketError> {
    let listen_fds = listen_fds.ok_or(SystemdSocketError::NotActivated)?;
    let count =
        listen_fds.trim().parse::<usize>().ok().filter(|&count| (1..=MAX_SOCKETS).contains(&count)).ok_or_else(
            || SystemdSocketError::Malformed {
                variable: "LISTEN_FDS",
                value: listen_fds.to_owned(),
                expected: "number of sockets from 1 to 64",
            },
        )?;
    // systemd always sets LISTEN_PID; without it the variables may have been
    // inherited from a parent that was the one meant.
    let listen_pid = listen_pid.ok_or(SystemdSocketError::Malformed {
        variable: "LISTEN_PID",
        value: String::new(),
        expected: "process id (systemd sets it with LISTEN_FDS)",
    })?;
    let pid = listen_pid.trim().parse::<u32>().map_err(|_| SystemdSocketError::Malformed {
        variable: "LISTEN_PID",
        value: listen_pid.to_owned(),
        expected: "process id",
    })?;
    if pid != own_pid {
        return Err(SystemdSocketError::OtherProcess { listen_pid: pid, own_pid });
    }
    Ok(count)
}

/// The socket's address if `fd` is a listening IPv4 or IPv6 TCP socket.
fn check_listening_tcp(fd: &OwnedFd) -> Result<ListenAddress, SystemdSocketError> {
    let raw = fd.as_raw_fd();
    let problem = |problem: String| SystemdSocketError::NotTcpListener { fd: raw, problem };
    let domain = socket_option(raw, libc::SO_DOMAIN).map_err(|error| problem(format!("is not a socket ({error})")))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(problem(format!("is a socket of address family {domain}, not IPv4 or IPv6")));
    }
    let kind = socket_option(raw, libc::SO_TYPE).map_err(|error| problem(error.to_string()))?;
    if kind != libc::SOCK_STREAM {
        return Err(problem("is not a stream (TCP) socket".to_owned()));
    }
    let listening = socket_option(raw, libc::SO_ACCEPTCONN).map_err(|error| problem(error.to_string()))?;
    if listening == 0 {
        return Err(problem("is not listening".to_owned()));
    }
    // A borrowed std listener only to read the address; `fd` stays the owner.
    // SAFETY: `raw` is open for the whole scope and the ManuallyDrop never
    // closes it.
    let borrowed = std::mem::ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(raw) });
    let addr = borrowed.local_addr().map_err(|error| problem(format!("has no local address ({error})")))?;
    let dual_stack = match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            socket_option_level(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(|e| problem(e.to_string()))? == 0
        }
        _ => false,
    };
    Ok(ListenAddress { addr, dual_stack })
}

fn socket_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    socket_option_level(fd, libc::SOL_SOCKET, option)
}

fn socket_option_level(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a c_int.
    let rc = unsafe { libc::getsockopt(fd, level, option, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_this_process_and_a_count() {
        assert_eq!(parse_environment(Some("42"), Some("2"), 42).unwrap(), 2);
        assert!(matches!(parse_environment(None, None, 42), Err(SystemdSocketError::NotActivated)));
        assert!(matches!(
            parse_environment(Some("41"), Some("1"), 42),
            Err(SystemdSocketError::OtherProcess { listen_pid: 41, own_pid: 42 })
        ));
        for bad in ["0", "-1", "x", "65", ""] {
            let error = parse_environment(Some("42"), Some(bad), 42).unwrap_err();
            assert!(matches!(error, SystemdSocketError::Malformed { variable: "LISTEN_FDS", .. }), "{bad}: {error}");
        }
        assert!(matches!(
            parse_environment(None, Some("1"), 42),
            Err(SystemdSocketError::Malformed { variable: "LISTEN_PID", .. })
        ));
        assert!(matches!(
            parse_environment(Some("pid"), Some("1"), 42),
            Err(SystemdSocketError::Malformed { variable: "LISTEN_PID", .. })
        ));
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let address = check_listening_tcp(&OwnedFd::from(listener)).unwrap();
        assert_eq!(address.to_string(), format!("127.0.0.1:{port}"));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = check_listening_tcp(&OwnedFd::from(udp)).unwrap_err();
        assert!(error.to_string().contains("not a stream"), "{error}");

        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let error = check_listening_tcp(&OwnedFd::from(unix)).unwrap_err();
        assert!(error.to_string().contains("address family"), "{error}");

        let file = std::fs::File::open("/proc/self/status").unwrap();
        let error = check_listening_tcp(&OwnedFd::from(file)).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");

        // Connected, not listening.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let error = check_listening_tcp(&OwnedFd::from(client)).unwrap_err();
        assert!(error.to_string().contains("not listening"), "{error}");
    }
}
