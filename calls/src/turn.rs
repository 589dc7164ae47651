//! natter's own TURN relay (`natter turn`, RFC 5766/8656 over UDP): the webrtc-rs TURN
//! server, accepting the time-limited credentials of [`crate::ice`] (TURN REST API
//! convention, HMAC-SHA1 under a shared secret). It also answers STUN binding requests,
//! so one address serves as both the STUN and the TURN server.
//!
//! Relayed addresses are IPv4 only (the webrtc-rs server allocates IPv4 relays); the
//! listening socket may be IPv4 or IPv6.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::net::UdpSocket;
use turn::{
    auth::{AuthHandler, generate_auth_key},
    relay::{relay_range::RelayAddressGeneratorRanges, relay_static::RelayAddressGeneratorStatic},
    server::{
        Server,
        config::{ConnConfig, ServerConfig},
    },
};
use webrtc_util::vnet::net::Net;

/// The default realm.
pub const DEFAULT_REALM: &str = "natter";

/// How natter's TURN relay runs.
#[derive(Clone)]
pub struct TurnConfig {
    /// The UDP address to listen on, e.g. `0.0.0.0:3478`. Port 0 picks a free one (see
    /// [`TurnServer::local_addr`]).
    pub listen: SocketAddr,
    /// The address advertised in relayed candidates: the server's public IPv4 address.
    pub relay_ip: IpAddr,
    /// Where relay sockets bind, usually `0.0.0.0`.
    pub relay_bind: IpAddr,
    /// The UDP ports relay sockets take (inclusive), e.g. `49160..=49200` so a firewall
    /// or a container can publish exactly them; `None`: any free port.
    pub relay_ports: Option<(u16, u16)>,
    /// The TURN realm, `natter` by default.
    pub realm: String,
    /// The secret shared with the `/v1/calls/ice-servers` endpoint, which signs the
    /// credentials.
    pub secret: Arc<str>,
}

impl TurnConfig {
    /// A config with the default realm, relay sockets bound on `0.0.0.0`.
    pub fn new(listen: SocketAddr, relay_ip: IpAddr, secret: Arc<str>) -> TurnConfig {
        TurnConfig {
            listen,
            relay_ip,
            relay_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            relay_ports: None,
            realm: DEFAULT_REALM.to_owned(),
            secret,
        }
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("relay_ip", &self.relay_ip)
            .field("relay_bind", &self.relay_bind)
            .field("relay_ports", &self.relay_ports)
            .field("realm", &self.realm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why the TURN server did not start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The configuration cannot work.
    #[error("invalid TURN configuration: {0}")]
    Config(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The webrtc-rs server refused to start.
    #[error("TURN server: {0}")]
    Server(#[from] turn::Error),
}

/// Checks credentials against the shared secret ([`crate::ice::check`]) and answers the
/// long-term credential key, MD5(`username:realm:password`).
struct SecretAuth {
    secret: Arc<str>,
    realm: String,
}

impl AuthHandler for SecretAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        if realm != self.realm {
            tracing::debug!(%src_addr, realm, "TURN request for another realm refused");
            return Err(turn::Error::ErrNoSuchUser);
        }
        match crate::ice::check(&self.secret, username, SystemTime::now()) {
            Ok(password) => Ok(generate_auth_key(username, &self.realm, &password)),
            Err(e) => {
                // A username is an expiry and a user id, nothing secret; a refused one
                // may be long, so only its start is logged.
                let shown: String = username.chars().take(64).collect();
                tracing::debug!(%src_addr, username = %shown, error = %e, "TURN credentials refused");
                Err(turn::Error::ErrNoSuchUser)
            }
        }
    }
}

/// A running TURN relay. [`TurnServer::close`] stops it.
pub struct TurnServer {
    server: Server,
    local_addr: SocketAddr,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    /// Binds `config.listen` (UDP) and serves TURN and STUN on it.
    pub async fn start(config: TurnConfig) -> Result<TurnServer, TurnError> {
        if !config.relay_ip.is_ipv4() || !config.relay_bind.is_ipv4() {
            return Err(TurnError::Config(format!(
                "relayed addresses are IPv4 only (relay ip {}, relay bind {})",
                config.relay_ip, config.relay_bind
            )));
        }
        if config.relay_ip.is_unspecified() {
            return Err(TurnError::Config(
                "the relay ip must be the address peers reach, not 0.0.0.0".into(),
            ));
        }
        if let Some((min, max)) = config.relay_ports
            && (min == 0 || min > max)
        {
            return Err(TurnError::Config(format!(
                "relay ports {min}-{max}: need 1 <= min <= max"
            )));
        }
        if config.realm.is_empty() {
            return Err(TurnError::Config("the realm is empty".into()));
        }
        if config.secret.is_empty() {
            return Err(TurnError::Config("the TURN secret is empty".into()));
        }
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| TurnError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| TurnError::Bind {
            addr: config.listen,
            source,
        })?;
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::new(socket),
                relay_addr_generator: match config.relay_ports {
                    None => Box::new(RelayAddressGeneratorStatic {
                        relay_address: config.relay_ip,
                        address: config.relay_bind.to_string(),
                        net: Arc::new(Net::new(None)),
                    }),
                    Some((min_port, max_port)) => Box::new(RelayAddressGeneratorRanges {
                        relay_address: config.relay_ip,
                        min_port,
                        max_port,
                        // Random picks in the range until a free port (the crate's default).
                        max_retries: 10,
                        address: config.relay_bind.to_string(),
                        net: Arc::new(Net::new(None)),
                    }),
                },
            }],
            realm: config.realm.clone(),
            auth_handler: Arc::new(SecretAuth {
                secret: config.secret,
                realm: config.realm.clone(),
            }),
            // Zero is the default: ten minutes.
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await?;
        tracing::info!(
            %local_addr,
            relay_ip = %config.relay_ip,
            relay_bind = %config.relay_bind,
            realm = %config.realm,
            "TURN server listening"
        );
        Ok(TurnServer { server, local_addr })
    }

    /// The bound UDP address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and closes the allocations' relay sockets.
    pub async fn close(self) {
        if let Err(e) = self.server.close().await {
            tracing::warn!(error = %e, "TURN server did not close cleanly");
        }
        tracing::info!(local_addr = %self.local_addr, "TURN server closed");
    }
}
