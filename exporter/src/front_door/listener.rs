//! The listeners: every `--web.listen-address` opened before anything is
//! served, with the allowlist socket filter attached before `listen()`.
//!
//! It owns the sockets up to `listen()`; what happens to a connection after
//! `accept()` is [`super::server`]'s business.

use std::{
    fmt, io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, IntoRawFd as _, RawFd},
};

use tokio::net::TcpSocket;

/// One `--web.listen-address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListenAddress {
    pub(crate) addr: SocketAddr,
    /// Set for ":PORT": one IPv6 socket that also accepts IPv4, as Go's
    /// listener (and so node_exporter) does.
    pub(crate) dual_stack: bool,
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dual_stack { write!(f, ":{}", self.addr.port()) } else { self.addr.fmt(f) }
    }
}

/// A listening socket with the allowlist filter attached, ready to serve.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) address: ListenAddress,
    pub(crate) socket: std::net::TcpListener,
    pub(crate) source_check: SourceCheck,
}

/// Where a listener's connections have their source checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceCheck {
    /// The filter was attached before `listen()`: no connection ever got
    /// past the kernel without it.
    Kernel,
    /// The socket listened before the filter was attached (systemd's,
    /// [`super::systemd_socket`]): connections may have queued unfiltered,
    /// so each accepted one is checked again against the allowlist.
    AlsoInUserspace,
}

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: u32 = 1024;

/// A listen address that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}{hint}")]
pub(crate) struct BindError {
    address: ListenAddress,
    #[source]
    source: io::Error,
    hint: &'static str,
}

/// Opens every listener before serving any, so a bad address fails
/// start-up instead of leaving a half-listening daemon. The listeners are
/// plain std sockets: they are opened before the async runtime exists (and
/// before privileges are dropped), and handed to it by [`serve`].
/// `filter` (the allowlist socket filter) is attached to each before it
/// listens.
pub(crate) fn bind_all(addresses: &[ListenAddress], filter: BorrowedFd<'_>) -> Result<Vec<Listener>, BindError> {
    addresses
        .iter()
        .map(|&address| {
            bind(address, filter).map(|socket| Listener { address, socket, source_check: SourceCheck::Kernel })
        })
        .collect()
}

fn bind(address: ListenAddress, filter: BorrowedFd<'_>) -> Result<std::net::TcpListener, BindError> {
    let fail = |source: io::Error| {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => " (another process, perhaps another kernel-exporter, listens there)",
            io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
            io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
            _ => "",
        };
        BindError { address, source, hint }
    };
    let socket = match address.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    if address.addr.is_ipv6() {
        set_ipv6_only(&socket, !address.dual_stack).map_err(fail)?;
    }
    socket.bind(address.addr).map_err(fail)?;
    // Before listen(): from its first SYN on, the socket only sees allowed
    // sources, and every accepted socket inherits the filter.
    attach_filter(socket.as_raw_fd(), filter).map_err(|source| BindError {
        address,
        source,
        hint: " (attaching the allowlist socket filter, SO_ATTACH_BPF)",
    })?;
    // tokio's `listen` needs a running runtime; listen on the raw socket.
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is the socket just bound, owned by nobody else now; the
    // std listener takes ownership and closes it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // SAFETY: listen(2) on a socket descriptor we own.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG as libc::c_int) } != 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(listener)
}

/// Attaches the allowlist program to `socket`, replacing any filter on it.
pub(crate) fn attach_filter(socket: RawFd, filter: BorrowedFd<'_>) -> io::Result<()> {
    let program = filter.as_raw_fd();
    // SAFETY: the caller's descriptor is a live socket, and the option value
    // points to the program's descriptor, a c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            (&raw const program).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn set_ipv6_only(socket: &TcpSocket, only: bool) -> io::Result<()> {
    let value = libc::c_int::from(only);
    // SAFETY: the descriptor is a live socket owned by `socket`, and the
    // option value points to a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
