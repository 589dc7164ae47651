//! The client's network address as the services see it, for limits per address.
//!
//! Behind a load balancer every connection comes from the balancer, so the client's own
//! address is in `X-Forwarded-For`. That header is only believed from the addresses
//! listed as trusted proxies (`--trusted-proxies`): the list is walked from the right
//! (the hop nearest to us) and the first address that is not a trusted proxy is the
//! client. With no trusted proxies the header is ignored and the peer address is the
//! client, so nobody can pick their own address by sending the header.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// The client's address, put into each request's extensions by the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// Networks whose `X-Forwarded-For` is believed (load balancers, proxies).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and networks (`10.0.0.0/8,::1`).
    /// Empty: trust nobody.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<ipnet::IpNet>() {
                Ok(net) => net,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => ipnet::IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "trusted proxy {part:?} is not an address or a network (CIDR)"
                        ));
                    }
                },
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted proxy, else the
    /// nearest address in `X-Forwarded-For` that is not one (the leftmost if all are).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        // Every X-Forwarded-For header, in order, as one list of hops.
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .map(|hop| hop.parse::<IpAddr>().ok())
            .collect::<Option<Vec<_>>>()
            // A malformed list is not believed at all.
            .unwrap_or_default();
        for hop in hops.into_iter().rev() {
            client = canonical(hop);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("9.9.9.9"), &headers(&["1.2.3.4"])),
            ip("9.9.9.9")
        );
        let lb = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            lb.client(ip("9.9.9.9"), &headers(&["1.2.3.4"])),
            ip("9.9.9.9")
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let lb = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        // The client forged the first entry; the balancer appended the real one.
        let h = headers(&["6.6.6.6, 1.2.3.4"]);
        assert_eq!(lb.client(ip("10.0.0.5"), &h), ip("1.2.3.4"));
        // Two proxies in a row, across two headers.
        let h = headers(&["1.2.3.4", "10.1.1.1"]);
        assert_eq!(lb.client(ip("127.0.0.1"), &h), ip("1.2.3.4"));
        // Only proxies: the leftmost.
        let h = headers(&["10.2.2.2"]);
        assert_eq!(lb.client(ip("10.0.0.5"), &h), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(lb.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
        // Garbage is not believed.
        let h = headers(&["1.2.3.4, nonsense"]);
        assert_eq!(lb.client(ip("10.0.0.5"), &h), ip("10.0.0.5"));
    }

    #[test]
    fn mapped_addresses_and_bad_lists() {
        let lb = TrustedProxies::parse("127.0.0.1").unwrap();
        assert_eq!(
            lb.client(ip("::ffff:127.0.0.1"), &headers(&["::ffff:1.2.3.4"])),
            ip("1.2.3.4")
        );
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
    }
}
