//! natter's TURN relay, end to end over loopback: a real allocation with credentials from
//! `ice::credentials`, data relayed both ways, and refused credentials.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use natter_calls::{
    ice,
    turn::{TurnConfig, TurnError, TurnServer},
};
use natter_proto::UserId;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn as _;

const SECRET: &str = "a TURN secret shared with the ice-servers endpoint";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

async fn server() -> TurnServer {
    server_with_ports(None).await
}

async fn server_with_ports(relay_ports: Option<(u16, u16)>) -> TurnServer {
    let config = TurnConfig {
        listen: SocketAddr::new(LOOPBACK, 0),
        relay_ip: LOOPBACK,
        relay_bind: LOOPBACK,
        relay_ports,
        realm: "natter".into(),
        secret: Arc::from(SECRET),
    };
    within("start", TurnServer::start(config))
        .await
        .expect("the TURN server starts")
}

async fn client(server: SocketAddr, username: String, password: String) -> Client {
    let conn = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
        .await
        .expect("bind the client socket");
    let client = within(
        "client",
        Client::new(ClientConfig {
            stun_serv_addr: server.to_string(),
            turn_serv_addr: server.to_string(),
            username,
            password,
            realm: "natter".into(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(conn),
            vnet: None,
        }),
    )
    .await
    .expect("the TURN client is created");
    within("listen", client.listen())
        .await
        .expect("the TURN client listens");
    client
}

#[tokio::test]
async fn allocation_relays_both_ways() {
    let server = server().await;
    let addr = server.local_addr();
    assert_eq!(addr.ip(), LOOPBACK);
    assert_ne!(addr.port(), 0, "local_addr is the bound port");

    let (username, password) =
        ice::credentials(SECRET, UserId(42), ice::DEFAULT_TTL, SystemTime::now());
    let client = client(addr, username, password).await;

    // The server answers STUN binding requests too.
    let mapped = within("binding", client.send_binding_request())
        .await
        .expect("STUN binding answered");
    assert_eq!(mapped.ip(), LOOPBACK);

    let relay = within("allocate", client.allocate())
        .await
        .expect("the allocation succeeds");
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(relayed.ip(), LOOPBACK, "the advertised relay ip");
    assert_ne!(relayed.port(), addr.port());

    // Client → peer: sending through the relay first installs a permission for the peer.
    let peer = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0))
        .await
        .expect("bind the peer");
    let peer_addr = peer.local_addr().expect("peer address");
    within("relay send", relay.send_to(b"hello peer", peer_addr))
        .await
        .expect("sent through the relay");
    let mut buf = [0u8; 1500];
    let (n, from) = within("peer receive", peer.recv_from(&mut buf))
        .await
        .expect("the peer receives");
    assert_eq!(&buf[..n], b"hello peer");
    assert_eq!(from, relayed, "the peer sees the relayed address");

    // Peer → client: the peer answers the relayed address, the client reads it.
    peer.send_to(b"hello client", relayed)
        .await
        .expect("the peer sends");
    let (n, from) = within("relay receive", relay.recv_from(&mut buf))
        .await
        .expect("the client receives through the relay");
    assert_eq!(&buf[..n], b"hello client");
    assert_eq!(from, peer_addr);

    // A second round, so it is not a one-off.
    peer.send_to(b"again", relayed)
        .await
        .expect("the peer sends");
    let (n, _) = within("relay receive 2", relay.recv_from(&mut buf))
        .await
        .expect("the client receives again");
    assert_eq!(&buf[..n], b"again");

    within("relay close", relay.close())
        .await
        .expect("the relay closes");
    within("client close", client.close())
        .await
        .expect("the client closes");
    within("server close", server.close()).await;
}

#[tokio::test]
async fn relay_ports_stay_in_the_configured_range() {
    // A range of free ports: bind a few sockets, note them, release them.
    let probe = std::net::UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).expect("probe");
    let base = probe.local_addr().expect("probe address").port();
    drop(probe);
    let (min, max) = if base > 60_000 {
        (base - 20, base)
    } else {
        (base, base + 20)
    };
    let server = server_with_ports(Some((min, max))).await;
    for user in [1, 2, 3] {
        let (username, password) =
            ice::credentials(SECRET, UserId(user), ice::DEFAULT_TTL, SystemTime::now());
        let client = client(server.local_addr(), username, password).await;
        let relay = within("allocate", client.allocate())
            .await
            .expect("the allocation succeeds");
        let port = relay.local_addr().expect("relayed address").port();
        assert!((min..=max).contains(&port), "{port} not in {min}-{max}");
    }
    server.close().await;
}

#[tokio::test]
async fn a_reversed_port_range_is_refused() {
    let config = TurnConfig {
        relay_ports: Some((5000, 4000)),
        ..TurnConfig::new(SocketAddr::new(LOOPBACK, 0), LOOPBACK, Arc::from(SECRET))
    };
    assert!(matches!(
        TurnServer::start(config).await,
        Err(natter_calls::turn::TurnError::Config(_))
    ));
}

#[tokio::test]
async fn wrong_password_refused() {
    let server = server().await;
    let (username, _) = ice::credentials(SECRET, UserId(42), ice::DEFAULT_TTL, SystemTime::now());
    let client = client(server.local_addr(), username, "not the password".into()).await;
    let result = within("allocate", client.allocate()).await;
    assert!(result.is_err(), "a wrong password is refused");
    within("client close", client.close())
        .await
        .expect("the client closes");
    within("server close", server.close()).await;
}

#[tokio::test]
async fn other_secret_refused() {
    let server = server().await;
    let (username, password) = ice::credentials(
        "some other secret",
        UserId(42),
        ice::DEFAULT_TTL,
        SystemTime::now(),
    );
    let client = client(server.local_addr(), username, password).await;
    let result = within("allocate", client.allocate()).await;
    assert!(
        result.is_err(),
        "credentials under another secret are refused"
    );
    within("client close", client.close())
        .await
        .expect("the client closes");
    within("server close", server.close()).await;
}

#[tokio::test]
async fn expired_username_refused() {
    let server = server().await;
    // Issued two days ago for a day: expired a day ago, correctly signed.
    let issued = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    let (username, password) = ice::credentials(SECRET, UserId(42), ice::DEFAULT_TTL, issued);
    let client = client(server.local_addr(), username, password).await;
    let result = within("allocate", client.allocate()).await;
    assert!(result.is_err(), "expired credentials are refused");
    within("client close", client.close())
        .await
        .expect("the client closes");
    within("server close", server.close()).await;
}

#[tokio::test]
async fn webrtc_rs_long_term_credentials_accepted() {
    // webrtc-rs' own helper issues a bare expiry as the username; `check` takes it.
    let server = server().await;
    let (username, password) =
        turn::auth::generate_long_term_credentials(SECRET, Duration::from_secs(600))
            .expect("credentials");
    let client = client(server.local_addr(), username, password).await;
    let relay = within("allocate", client.allocate())
        .await
        .expect("the allocation succeeds");
    within("relay close", relay.close())
        .await
        .expect("the relay closes");
    within("client close", client.close())
        .await
        .expect("the client closes");
    within("server close", server.close()).await;
}

#[tokio::test]
async fn ipv6_relay_refused() {
    let mut config = TurnConfig::new(
        SocketAddr::new(LOOPBACK, 0),
        "2001:db8::1".parse().expect("ip"),
        Arc::from(SECRET),
    );
    assert!(matches!(
        TurnServer::start(config.clone()).await,
        Err(TurnError::Config(_))
    ));
    config.relay_ip = LOOPBACK;
    config.secret = Arc::from("");
    assert!(matches!(
        TurnServer::start(config).await,
        Err(TurnError::Config(_))
    ));
}
