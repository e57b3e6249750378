//! CIDR ranges: `allowed_sources` and `--web.allow-from` entries, compared
//! as the kernel's allowlist trie compares them (IPv4 as IPv4-mapped IPv6).
//!
//! Parsing and containment only; the trie itself is [`super::allowlist`]'s.
//! The address is read by the standard library's parser and the range
//! (prefix length, host bits, containment) is `ipnet`'s. Not `IpNet`'s own
//! text parser: it is a copy of an older std parser that takes leading zeros
//! in IPv4 octets, so `010.0.0.0/8` would be 10.0.0.0/8 where `inet_aton`
//! reads 8.0.0.0/8; std refuses it, as this module always has.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv6Net};

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
        self.trie_net().contains(&ipv6_mapped(ip))
    }

    /// The range as the kernel's allowlist trie holds it: a prefix length
    /// over the 16-byte address, IPv4 as IPv4-mapped IPv6.
    pub(crate) fn trie_range(&self) -> (u32, [u8; 16]) {
        let net = self.trie_net();
        (u32::from(net.prefix_len()), net.network().octets())
    }

    /// The range over IPv6, an IPv4 range as its IPv4-mapped one (96 bits
    /// of prefix more).
    fn trie_net(&self) -> Ipv6Net {
        let prefix = self.prefix.saturating_add(if self.addr.is_ipv4() { 96 } else { 0 });
        // A prefix above 128 only comes from a `Cidr` built by hand, not
        // parsed; it means a single address, as 128 does.
        Ipv6Net::new(ipv6_mapped(self.addr), prefix).unwrap_or_else(|_| Ipv6Net::from(ipv6_mapped(self.addr)))
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
        // A bare address is a /32 or a /128.
        let host = IpNet::from(addr);
        let net = match prefix {
            None => host,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .and_then(|prefix| IpNet::new(addr, prefix).ok())
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {}", host.max_prefix_len()))?,
        };
        if net.trunc() != net {
            // `trunc` clears the host bits: the network address.
            return Err(format!("{text:?} has host bits set; the range is {}", net.trunc()));
        }
        Ok(Self { addr, prefix: net.prefix_len() })
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

    #[test]
    fn errors_say_what_is_wrong() {
        let error = |text: &str| text.parse::<Cidr>().unwrap_err();
        assert_eq!(error("10.0.0.0/33"), "\"10.0.0.0/33\": the prefix length must be 0 to 32");
        assert_eq!(error("2001:db8::/129"), "\"2001:db8::/129\": the prefix length must be 0 to 128");
        assert_eq!(error("10.1.0.0/8"), "\"10.1.0.0/8\" has host bits set; the range is 10.0.0.0/8");
        assert_eq!(error("2001:db8::1/32"), "\"2001:db8::1/32\" has host bits set; the range is 2001:db8::/32");
        assert_eq!(error("10.0.0.0/"), "\"10.0.0.0/\": the prefix length must be 0 to 32");
        assert_eq!(error("/8"), "\"/8\" is not an IP address or CIDR range");
        // Leading zeros: octal to `inet_aton`, so refused (IpNet's parser takes them).
        assert_eq!(error("010.0.0.0/8"), "\"010.0.0.0/8\" is not an IP address or CIDR range");
        assert!("010.0.0.0/8".parse::<IpNet>().is_ok());
        // A bare address is a single host.
        assert_eq!("192.0.2.7".parse(), Ok(Cidr { addr: "192.0.2.7".parse().unwrap(), prefix: 32 }));
        assert_eq!("2001:db8::1".parse(), Ok(Cidr { addr: "2001:db8::1".parse().unwrap(), prefix: 128 }));
    }

    #[test]
    fn trie_ranges_are_ipv4_mapped() {
        let v4: Cidr = "10.0.0.0/8".parse().unwrap();
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12] = 10;
        assert_eq!(v4.trie_range(), (104, mapped));
        let every: Cidr = "::/0".parse().unwrap();
        assert_eq!(every.trie_range(), (0, [0; 16]));
        let host: Cidr = "::1".parse().unwrap();
        assert_eq!(host.trie_range().0, 128);
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
