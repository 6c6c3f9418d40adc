//! Client networks for the operations server's allow-list (`ops.http.allow_from`).
//!
//! Format: CIDR notation, `ADDRESS/PREFIX` (`10.20.0.0/16`, `::1/128`), or a bare address
//! meaning that host alone (`/32` or `/128`). Host bits below the prefix must be zero, so
//! `10.20.1.0/16` is refused rather than silently widened. An IPv4 network also matches
//! IPv4-mapped IPv6 clients (`::ffff:10.20.1.5`), which is how a dual-stack listener sees them.
//!
//! The arithmetic is the `ipnet` crate's; this module adds the strict parsing, the error
//! messages and what "loopback" means for a network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;

/// An IP network: an address with its host bits zero, and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(IpNet);

impl fmt::Debug for Cidr {
    /// `Cidr { addr: 10.20.0.0, prefix: 16 }`, as before this type was built on `ipnet`: the
    /// configuration fingerprint (`ops::config_change`) hashes the `Debug` text, and an
    /// upgrade alone must not look like a configuration change in the audit log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cidr")
            .field("addr", &self.0.addr())
            .field("prefix", &self.0.prefix_len())
            .finish()
    }
}

/// Why a network could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("{0:?} is not an IP address or network (expected e.g. 10.20.0.0/16 or ::1/128)")]
    Address(String),
    /// The prefix is not a number in range for the address family.
    #[error("prefix /{0} is not between 0 and {1}")]
    Prefix(String, u8),
    /// Bits below the prefix are set.
    #[error("{0} has host bits set below the prefix; did you mean {1}?")]
    HostBits(String, Cidr),
}

/// The networks of this machine's loopback interface.
const LOOPBACK: [Cidr; 2] = [
    Cidr(IpNet::new_assert(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        8,
    )),
    Cidr(IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128)),
];

impl Cidr {
    /// The networks of this machine's loopback interface: `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> Vec<Cidr> {
        LOOPBACK.to_vec()
    }

    /// Whether every address of this network is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match self.0.addr() {
            IpAddr::V4(a) => a.is_loopback() && self.0.prefix_len() >= 8,
            IpAddr::V6(a) => a.is_loopback() && self.0.prefix_len() == 128,
        }
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let width = IpNet::from(addr).max_prefix_len();
        let prefix = match prefix_text {
            None => width,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| CidrError::Prefix(p.to_owned(), width))?,
        };
        let net =
            IpNet::new(addr, prefix).map_err(|_| CidrError::Prefix(prefix.to_string(), width))?;
        if net.trunc() != net {
            return Err(CidrError::HostBits(text.to_owned(), Cidr(net.trunc())));
        }
        Ok(Cidr(net))
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_exactly_their_addresses() {
        let cases = [
            ("10.20.0.0/16", "10.20.255.1", true),
            ("10.20.0.0/16", "10.21.0.1", false),
            ("127.0.0.0/8", "127.0.0.2", true),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("127.0.0.0/8", "::1", false),
            ("::1/128", "::1", true),
            ("::1", "::2", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("::/0", "2001:db8::1", true),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
        ];
        for (net, addr, expected) in cases {
            let n: Cidr = net.parse().unwrap();
            assert_eq!(n.contains(ip(addr)), expected, "{net} contains {addr}");
        }
    }

    #[test]
    fn bad_networks_are_refused_with_a_reason() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!(
            "::1/129".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!(
            "localhost".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::Address(_))));
        let err = "10.20.1.0/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.20.1.0/16 has host bits set below the prefix; did you mean 10.20.0.0/16?"
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "prefix /33 is not between 0 and 32"
        );
    }

    #[test]
    fn only_loopback_networks_count_as_loopback() {
        for (net, expected) in [
            ("127.0.0.0/8", true),
            ("127.0.0.1", true),
            ("::1", true),
            ("0.0.0.0/0", false),
            ("10.0.0.0/8", false),
            ("::/0", false),
        ] {
            assert_eq!(
                net.parse::<Cidr>().unwrap().is_loopback(),
                expected,
                "{net}"
            );
        }
        assert!(Cidr::loopback().iter().all(Cidr::is_loopback));
        let shown: Vec<String> = Cidr::loopback().iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128"]);
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,48}") {
            let _ = text.parse::<Cidr>();
        }

        #[test]
        fn a_parsed_network_contains_its_own_address_and_prints_as_written(a in proptest::prelude::any::<[u8; 4]>(), prefix in 0u8..=32) {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let network = Ipv4Addr::from(u32::from_be_bytes(a) & mask);
            let text = format!("{network}/{prefix}");
            let cidr: Cidr = text.parse().unwrap();
            proptest::prop_assert!(cidr.contains(IpAddr::V4(network)));
            proptest::prop_assert_eq!(cidr.to_string(), text);
        }
    }
}
