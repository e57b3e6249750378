//! CIDR ranges: `allowed_sources` and `--web.allow-from` entries, compared
//! as the kernel's allowlist trie compares them (IPv4 as IPv4-mapped IPv6).
//!
//! Parsing and containment only; the trie itself is [`super::allowlist`]'s.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

/// One `allowed_sources` entry: an address and a prefix length whose host
/// bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside, compared as the kernel's allowlist does: over
    /// IPv6, IPv4 as IPv4-mapped. So `::/0` takes IPv4 clients too, and
    /// `10.0.0.0/8` the mapped `::ffff:10.1.2.3`: the daemon never refuses a
    /// client the socket filter let in, nor serves one it would have dropped.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (prefix, network) = self.trie_range();
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        u128::from_be_bytes(network) == u128::from(ipv6_mapped(ip)) & mask
    }

    /// The range as the kernel's allowlist trie holds it: a prefix length
    /// over the 16-byte address, IPv4 as IPv4-mapped IPv6.
    pub(crate) fn trie_range(&self) -> (u32, [u8; 16]) {
        let prefix = u32::from(self.prefix) + if self.addr.is_ipv4() { 96 } else { 0 };
        (prefix, ipv6_mapped(self.addr).octets())
    }
}

/// `ip` as the socket filter looks it up: IPv4 sources as IPv4-mapped IPv6.
fn ipv6_mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a single host).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Self { addr, prefix };
        if !cidr.contains(addr) {
            // The network address with the host bits cleared.
            let network = match addr {
                IpAddr::V4(v4) => IpAddr::from(
                    (u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)).to_be_bytes(),
                ),
                IpAddr::V6(v6) => IpAddr::from(
                    (u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)).to_be_bytes(),
                ),
            };
            return Err(format!("{text:?} has host bits set; the range is {network}/{prefix}"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ranges of `allowed_sources` (or `--web.allow-from`); on error, the
/// key (`allowed_sources[i]`) and the problem.
pub(crate) fn parse_allowed_sources(texts: &[String]) -> Result<Vec<Cidr>, (String, String)> {
    let limit = exporter_common::allowlist::ALLOWLIST_ENTRIES as usize;
    if texts.is_empty() {
        return Err((
            "allowed_sources".to_owned(),
            "is empty, which would refuse every client, Prometheus included; remove the key to allow every source"
                .to_owned(),
        ));
    }
    if texts.len() > limit {
        return Err((
            "allowed_sources".to_owned(),
            format!("has {} ranges; the kernel's allowlist holds at most {limit}", texts.len()),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| text.trim().parse::<Cidr>().map_err(|problem| (format!("allowed_sources[{i}]"), problem)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_containment() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        // As the kernel's trie: IPv4 is IPv4-mapped IPv6.
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("::10.1.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("host.example".parse::<Cidr>().is_err());
    }

    /// Found by the `cidr` fuzz target (fuzz/regressions/cidr/): `::/0`
    /// refused IPv4 clients the socket filter had let in.
    #[test]
    fn ipv6_ranges_take_the_ipv4_clients_the_kernel_takes() {
        let every: Cidr = "::/0".parse().unwrap();
        assert!(every.contains("127.0.0.1".parse().unwrap()));
        assert!(every.contains("::ffff:127.0.0.1".parse().unwrap()));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("11.1.2.3".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(!v6.contains("32.1.13.184".parse().unwrap()), "2001:db8:: as IPv4 bits");
    }
}
