//! `kernel-exporter healthcheck`: the container probe. It runs the binary
//! itself (a `FROM scratch` image has no shell, curl or wget) next to the
//! daemon, in its network namespace, and asks the daemon's listener over
//! loopback for an HTTP answer.
//!
//! Why loopback and why an HTTP answer rather than a TCP connect (the
//! kubelet's `tcpSocket` probe):
//! - the kubelet probes a `hostNetwork` pod from the node's own address,
//!   which `allowed_sources` (the Prometheus servers) does not hold, so the
//!   kernel drops the probe's SYN. Loopback is one fixed entry,
//!   `127.0.0.1/32`, the same on every node, and no packet from the network
//!   can carry it (the kernel drops such "martian" sources), whereas
//!   allowing the node's address would need a per-node web config.
//! - the kernel completes a TCP handshake on a listening socket without the
//!   process: a connect succeeds even when the daemon is wedged. An HTTP
//!   answer needs the daemon's accept loop and a connection task to run.
//!
//! It sends a plain-HTTP `GET /` (no credentials: it has none). A plain
//! listener answers with the landing page; a TLS listener answers plain
//! HTTP with 400, and counts it as a `plain_http` handshake failure, which
//! never leads to a ban. Any `HTTP/1.x` status line is healthy: the daemon
//! answered.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// Why the daemon is not healthy; `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unhealthy {
    #[error("cannot connect to {address}: {source} (is the daemon running, and is {loopback} in allowed_sources?)")]
    Connect {
        address: SocketAddr,
        loopback: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{address} did not answer an HTTP request within {timeout:?}: {source}")]
    NoAnswer {
        address: SocketAddr,
        timeout: Duration,
        #[source]
        source: io::Error,
    },
    #[error("{address} answered {answer:?}, not an HTTP status line")]
    NotHttp { address: SocketAddr, answer: String },
}

/// Asks the daemon listening on `address` for an answer; returns the
/// status line.
pub(crate) fn check(address: SocketAddr, timeout: Duration) -> Result<String, Unhealthy> {
    let loopback = if address.is_ipv6() { "::1/128" } else { "127.0.0.1/32" };
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|source| Unhealthy::Connect {
        address,
        loopback,
        source,
    })?;
    let no_answer = |source| Unhealthy::NoAnswer { address, timeout, source };
    stream.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    stream.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: kernel-exporter-healthcheck\r\nConnection: close\r\n\r\n")
        .map_err(no_answer)?;
    let mut answer = [0u8; 64];
    let mut filled = 0;
    // The status line may arrive in pieces; 12 bytes hold "HTTP/1.1 200".
    while filled < 12 {
        match stream.read(&mut answer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(no_answer(error)),
        }
    }
    let text = String::from_utf8_lossy(&answer[..filled]);
    let line = text.lines().next().unwrap_or_default().to_owned();
    if line.starts_with("HTTP/1.") && line.len() >= 12 {
        Ok(line)
    } else {
        Err(Unhealthy::NotHttp { address, answer: line })
    }
}

/// The address to probe for a `--web.listen-address`: a wildcard address
/// is reached through loopback of the same family.
pub(crate) fn probe_address(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), v4.port())
        }
        // ":PORT" is a dual-stack [::]; IPv4 loopback is what a probe of
        // it is most likely to be allowed from.
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), v6.port())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, thread};

    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(probe_address("0.0.0.0:9569".parse().unwrap()), "127.0.0.1:9569".parse().unwrap());
        assert_eq!(probe_address("[::]:9569".parse().unwrap()), "127.0.0.1:9569".parse().unwrap());
        assert_eq!(probe_address("10.1.2.3:9569".parse().unwrap()), "10.1.2.3:9569".parse().unwrap());
        assert_eq!(probe_address("[::1]:9569".parse().unwrap()), "[::1]:9569".parse().unwrap());
    }

    fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            reader.get_mut().write_all(reply).unwrap();
        });
        address
    }

    #[test]
    fn any_http_status_is_healthy_anything_else_is_not() {
        let timeout = Duration::from_secs(5);
        let address = serve_once(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(check(address, timeout).unwrap(), "HTTP/1.1 400 Bad Request");
        let address = serve_once(b"\x15\x03\x03\x00\x02\x02\x28");
        assert!(matches!(check(address, timeout), Err(Unhealthy::NotHttp { .. })));
        let address = serve_once(b"");
        assert!(matches!(check(address, timeout), Err(Unhealthy::NotHttp { .. })));
        // Nobody listens on a port just closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = check(closed, timeout).unwrap_err();
        assert!(error.to_string().contains("127.0.0.1/32 in allowed_sources"), "{error}");
    }

    #[test]
    fn a_silent_listener_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = check(listener.local_addr().unwrap(), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(error, Unhealthy::NoAnswer { .. }), "{error}");
    }
}
