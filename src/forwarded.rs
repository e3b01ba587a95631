//! Who the client is behind a reverse proxy: `[server] trusted_proxies` names the
//! proxies whose `X-Forwarded-For` is believed. The client is the rightmost hop that
//! is not a trusted proxy: everything left of it was written by the client itself and
//! proves nothing.

use std::net::IpAddr;

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Addresses (`10.0.0.5`) or CIDRs (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "[server] trusted_proxies: '{}' is not an address or a CIDR \
                             (e.g. \"10.0.0.5\", \"10.0.0.0/8\")",
                            entry.escape_debug()
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client of a request that came from `peer` carrying the `X-Forwarded-For`
    /// values `forwarded` (each header line in order). A peer that is not a trusted
    /// proxy is the client whatever it says.
    pub fn client<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a [u8]>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded
            .filter_map(|line| std::str::from_utf8(line).ok())
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop that is not an address: nothing further left can be trusted.
            let Some(address) = parse_hop(hop) else {
                return client;
            };
            client = address;
            if !self.contains(address) {
                return address;
            }
        }
        // Every hop was a trusted proxy: the leftmost is the nearest to the client.
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|socket| socket.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(trusted: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
        trusted.client(ip(peer), lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.1"]);
        // The client lied about 6.6.6.6; the proxy appended what it saw.
        assert_eq!(
            client(&trusted, "10.1.2.3", &["6.6.6.6, 203.0.113.7"]),
            ip("203.0.113.7")
        );
        // Two proxies in a row; one header line each.
        assert_eq!(
            client(&trusted, "192.168.1.1", &["203.0.113.7", "10.9.9.9"]),
            ip("203.0.113.7")
        );
        // Ports and brackets.
        assert_eq!(
            client(&trusted, "10.0.0.1", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client(&trusted, "10.0.0.1", &["198.51.100.2:9"]),
            ip("198.51.100.2")
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            client(&trusted, "203.0.113.9", &["10.0.0.1"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(&TrustedProxies::default(), "127.0.0.1", &["1.2.3.4"]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_and_missing_headers_stop_at_what_is_known() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&trusted, "10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(
            client(&trusted, "10.0.0.1", &["1.2.3.4, junk"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            client(&trusted, "10.0.0.1", &["junk, 10.0.0.2"]),
            ip("10.0.0.2"),
            "the leftmost trusted hop before the garbage"
        );
        // All trusted: the leftmost.
        assert_eq!(
            client(&trusted, "10.0.0.1", &["10.0.0.3, 10.0.0.2"]),
            ip("10.0.0.3")
        );
        // IPv4 written as IPv6.
        assert_eq!(
            client(&trusted, "::ffff:10.0.0.1", &["203.0.113.1"]),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn entries_are_addresses_or_cidrs() {
        assert!(
            TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "fd00::/8".into()]).is_ok()
        );
        let err = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(TrustedProxies::parse(&["proxy.internal".into()]).is_err());
    }
}
