//! Real WebRTC calls through natter: two webrtc-rs peers, each a `natter_client::Client`
//! on its own device, place a call through `natter serve`, exchange their SDP and ICE
//! candidates only through natter's call signalling, connect, pass data-channel messages
//! both ways, hang up, and find the call in the conversation's history.
//!
//! The second test forces both peers through natter's own TURN relay
//! (`RTCIceTransportPolicy::Relay`, with the ICE servers each device fetched from
//! `GET /v1/calls/ice-servers`), and checks that wrong credentials get no relay at all.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Server, bounded, conv};
use natter_client::{Client, Event, Session, v1};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
        RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState, RTCIceServer,
        RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
        RTCSessionDescription,
    },
};

/// How long a call may take to connect (ICE, DTLS, SCTP) once both descriptions are set.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one signalling step or one data-channel message may take.
const STEP: Duration = Duration::from_secs(10);
/// Messages sent each way over the data channel.
const MESSAGES: usize = 3;

// ── One peer: a webrtc-rs connection whose events become channels ────────────────────

/// What a peer connection's callbacks report. The callbacks only push into channels, so
/// the connection's driver never waits on natter.
struct Handler {
    /// Every local candidate, as gathered.
    candidates: mpsc::UnboundedSender<(RTCIceCandidateType, RTCIceCandidateInit)>,
    gathering: watch::Sender<RTCIceGatheringState>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// Data channels the remote side opened.
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.send((event.candidate.typ, init));
            }
            Err(e) => eprintln!("a local candidate does not serialize: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        let _ = self.gathering.send(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.send(dc);
    }
}

/// A webrtc-rs peer connection on loopback and the receiving ends of its callbacks.
struct Peer {
    name: &'static str,
    pc: Arc<dyn PeerConnection>,
    candidates: Option<mpsc::UnboundedReceiver<(RTCIceCandidateType, RTCIceCandidateInit)>>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    state: watch::Receiver<RTCPeerConnectionState>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

impl Peer {
    async fn new(
        name: &'static str,
        ice_servers: Vec<RTCIceServer>,
        policy: RTCIceTransportPolicy,
    ) -> Peer {
        let (candidates_tx, candidates) = mpsc::unbounded_channel();
        let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (channels_tx, channels) = mpsc::unbounded_channel();
        let handler = Arc::new(Handler {
            candidates: candidates_tx,
            gathering: gathering_tx,
            state: state_tx,
            channels: channels_tx,
        });
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: building the peer connection: {e}"));
        Peer {
            name,
            pc: Arc::new(pc),
            candidates: Some(candidates),
            gathering,
            state,
            channels,
        }
    }

    /// Waits until the connection is Connected, failing on Failed/Closed or the deadline.
    async fn connected(&mut self, server: &Server, sent: &Sent) {
        let name = self.name;
        let outcome = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .map(|r| r.map(|s| *s));
        let state = match outcome {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => RTCPeerConnectionState::Closed,
            Err(_) => *self.state.borrow(),
        };
        if state != RTCPeerConnectionState::Connected {
            panic!(
                "{name}: the call did not connect within {CONNECT_TIMEOUT:?} (state {state}); \
                 candidates it sent through natter: {:?}\n---- natter log tail ----\n{}",
                sent.candidates(),
                server.log_tail(50)
            );
        }
    }
}

/// The SDP of `pc`'s local description (set just before).
async fn local_sdp(peer: &Peer) -> String {
    peer.pc
        .local_description()
        .await
        .unwrap_or_else(|| panic!("{}: no local description", peer.name))
        .sdp
}

/// The `a=candidate` lines of an SDP.
fn sdp_candidates(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(str::to_owned)
        .collect()
}

// ── Signalling over natter ────────────────────────────────────────────────────────────

/// What a side sent through natter: its candidates, and any signalling failure.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<(Vec<String>, Vec<String>)>>);

impl Sent {
    fn candidates(&self) -> Vec<String> {
        self.0.lock().unwrap().0.clone()
    }
    fn errors(&self) -> Vec<String> {
        self.0.lock().unwrap().1.clone()
    }
}

/// Forwards each local candidate of a peer to the other side with `call_signal`.
fn forward_candidates(
    client: Arc<Client>,
    call_id: String,
    mut rx: mpsc::UnboundedReceiver<(RTCIceCandidateType, RTCIceCandidateInit)>,
    sent: Sent,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((_typ, c)) = rx.recv().await {
            let candidate = v1::IceCandidate {
                candidate: c.candidate.clone(),
                sdp_mid: c.sdp_mid.clone().unwrap_or_default(),
                sdp_mline_index: c.sdp_mline_index.map_or(0, u32::from),
                username_fragment: c.username_fragment.clone().unwrap_or_default(),
            };
            let r = client.call_signal(&call_id, 0, None, Some(candidate)).await;
            let mut sent = sent.0.lock().unwrap();
            match r {
                Ok(_) => sent.0.push(c.candidate),
                Err(e) => sent.1.push(format!("call_signal({}): {e}", c.candidate)),
            }
        }
    })
}

/// A remote candidate from natter, as webrtc-rs takes it.
fn remote_candidate(c: &v1::IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: Some(c.sdp_mid.clone()),
        sdp_mline_index: u16::try_from(c.sdp_mline_index).ok(),
        username_fragment: (!c.username_fragment.is_empty()).then(|| c.username_fragment.clone()),
        url: None,
    }
}

/// What a side's pump hands the test: the events it did not consume itself, and
/// failures to apply what natter delivered.
type Pumped = Result<Event, String>;

/// Reads `client`'s events for the length of the call: applies the answer (caller) and
/// the remote candidates to `pc` — holding candidates until the remote description is
/// set — and passes every other event on, in order.
fn pump(
    client: Arc<Client>,
    pc: Arc<dyn PeerConnection>,
    call_id: String,
    mut remote_set: bool,
    received: Arc<Mutex<Vec<String>>>,
) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Pumped>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut held: Vec<RTCIceCandidateInit> = Vec::new();
        while let Some(ev) = client.recv().await {
            let Event::Call(call_ev) = &ev else {
                let _ = tx.send(Ok(ev));
                continue;
            };
            let ours = call_ev.call.as_ref().is_some_and(|c| c.call_id == call_id);
            let result = match call_ev.r#type() {
                v1::CallEventType::Answered if ours => {
                    let Some(d) = &call_ev.description else {
                        let _ = tx.send(Err("ANSWERED without the SDP answer".into()));
                        continue;
                    };
                    let answer = match RTCSessionDescription::answer(d.sdp.clone()) {
                        Ok(a) => a,
                        Err(e) => {
                            let _ = tx.send(Err(format!("the answer does not parse: {e}")));
                            continue;
                        }
                    };
                    let mut r = pc
                        .set_remote_description(answer)
                        .await
                        .map_err(|e| format!("set_remote_description(answer): {e}"));
                    remote_set = true;
                    for c in held.drain(..) {
                        if let Err(e) = pc.add_ice_candidate(c.clone()).await {
                            r = Err(format!("add_ice_candidate({}): {e}", c.candidate));
                        }
                    }
                    r.map(|()| Some(ev))
                }
                v1::CallEventType::Signal if ours => match &call_ev.candidate {
                    Some(c) if c.candidate.is_empty() => Ok(None), // end of candidates
                    Some(c) => {
                        received.lock().unwrap().push(c.candidate.clone());
                        let init = remote_candidate(c);
                        if remote_set {
                            pc.add_ice_candidate(init)
                                .await
                                .map(|()| None)
                                .map_err(|e| format!("add_ice_candidate({}): {e}", c.candidate))
                        } else {
                            held.push(init);
                            Ok(None)
                        }
                    }
                    None => Ok(Some(ev)), // renegotiation: not used here, passed on
                },
                _ => Ok(Some(ev)),
            };
            match result {
                Ok(Some(ev)) => {
                    let _ = tx.send(Ok(ev));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    });
    (task, rx)
}

/// The next pumped event `pick` accepts; fails on a signalling failure or the deadline.
async fn next_pumped<T>(
    rx: &mut mpsc::UnboundedReceiver<Pumped>,
    who: &str,
    what: &str,
    server: &Server,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
            Ok(Some(Err(e))) => panic!(
                "{who}: signalling failed: {e}\n---- natter log tail ----\n{}",
                server.log_tail(50)
            ),
            Ok(None) => panic!("{who}: the client shut down while waiting for {what}"),
            Err(_) => panic!(
                "{who}: no {what} within {STEP:?}\n---- natter log tail ----\n{}",
                server.log_tail(50)
            ),
        }
    }
}

/// Resolves with the first signalling failure a pump reports (or its end), logging and
/// dropping the events it passes meanwhile (none are expected while connecting).
async fn first_failure(rx: &mut mpsc::UnboundedReceiver<Pumped>) -> String {
    loop {
        match rx.recv().await {
            Some(Ok(ev)) => eprintln!("(ignored while connecting: {ev:?})"),
            Some(Err(e)) => return e,
            None => return "the client shut down".to_owned(),
        }
    }
}

// ── Data channels ─────────────────────────────────────────────────────────────────────

enum Dc {
    Open,
    Text(String),
    Closed,
}

/// Reads a data channel's events into a channel.
fn watch_channel(dc: Arc<dyn DataChannel>) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Dc>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(ev) = dc.poll().await {
            let out = match ev {
                DataChannelEvent::OnOpen => Dc::Open,
                DataChannelEvent::OnMessage(m) => {
                    Dc::Text(String::from_utf8_lossy(&m.data).into_owned())
                }
                DataChannelEvent::OnClose => {
                    let _ = tx.send(Dc::Closed);
                    break;
                }
                _ => continue,
            };
            let _ = tx.send(out);
        }
    });
    (task, rx)
}

/// The next `n` text messages of a data channel (skipping Open).
async fn texts(rx: &mut mpsc::UnboundedReceiver<Dc>, who: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Dc::Text(t))) => out.push(t),
            Ok(Some(Dc::Open)) => {}
            Ok(Some(Dc::Closed)) | Ok(None) => {
                panic!("{who}: the data channel closed after {out:?}")
            }
            Err(_) => panic!("{who}: got {out:?} of {n} data-channel messages within {STEP:?}"),
        }
    }
    out
}

// ── ICE servers from natter ───────────────────────────────────────────────────────────

/// `GET /v1/calls/ice-servers` with `session`'s access token, as webrtc-rs ICE servers.
async fn fetch_ice_servers(server: &Server, session: &Session) -> Vec<RTCIceServer> {
    let url = format!("{}/v1/calls/ice-servers", server.base_url());
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&session.access_token)
        .send()
        .await
        .expect("GET /v1/calls/ice-servers");
    assert_eq!(
        response.status(),
        reqwest::StatusCode::OK,
        "GET /v1/calls/ice-servers"
    );
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    let servers = body["ice_servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no ice_servers in {body}"));
    let servers: Vec<RTCIceServer> = servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s["urls"]
                .as_array()
                .unwrap_or_else(|| panic!("no urls in {s}"))
                .iter()
                .map(|u| u.as_str().expect("a URL string").to_owned())
                .collect(),
            username: s["username"].as_str().unwrap_or_default().to_owned(),
            credential: s["credential"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let turn = servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .unwrap_or_else(|| panic!("no TURN server in {body}"));
    assert!(
        turn.urls
            .iter()
            .all(|u| u.starts_with("turn:127.0.0.1:") && u.ends_with("?transport=udp")),
        "TURN URLs on loopback: {:?}",
        turn.urls
    );
    let user = session.user_id.get().to_string();
    assert_eq!(
        turn.username.split_once(':').map(|(_, u)| u),
        Some(user.as_str()),
        "the TURN username is <expiry>:<user id>"
    );
    assert!(!turn.credential.is_empty(), "a TURN credential");
    assert!(body["ttl_s"].as_u64().is_some_and(|t| t > 0), "{body}");
    servers
}

/// `servers` with the TURN entries' credentials passed through `f`.
fn with_turn_credentials(
    servers: &[RTCIceServer],
    f: impl Fn(&str, &str) -> (String, String),
) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if s.urls.iter().any(|u| u.starts_with("turn:")) {
                let (u, c) = f(&s.username, &s.credential);
                s.username = u;
                s.credential = c;
            }
            s
        })
        .collect()
}

/// Starts ICE gathering (relay only) with `servers` and returns every candidate found by
/// the time gathering completes.
async fn gather_relay(name: &'static str, servers: Vec<RTCIceServer>) -> Vec<String> {
    let mut peer = Peer::new(name, servers, RTCIceTransportPolicy::Relay).await;
    let _dc = peer
        .pc
        .create_data_channel("chat", None)
        .await
        .expect("create a data channel");
    let offer = peer.pc.create_offer(None).await.expect("create an offer");
    peer.pc
        .set_local_description(offer)
        .await
        .expect("set the local description");
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        peer.gathering
            .wait_for(|s| *s == RTCIceGatheringState::Complete),
    )
    .await
    .map(|r| r.map(|s| *s));
    assert!(
        matches!(done, Ok(Ok(_))),
        "{name}: ICE gathering did not complete within 20 s"
    );
    let mut rx = peer.candidates.take().expect("candidates not taken yet");
    let mut found = Vec::new();
    while let Ok((_, c)) = rx.try_recv() {
        found.push(c.candidate);
    }
    found.extend(sdp_candidates(&local_sdp(&peer).await));
    let _ = peer.pc.close().await;
    found
}

// ── The call ──────────────────────────────────────────────────────────────────────────

/// Who hangs up.
#[derive(Clone, Copy, Debug, PartialEq)]
enum HangsUp {
    Caller,
    Callee,
}

/// What a call showed, for the relay checks.
struct CallRecord {
    /// Candidates each side sent through natter (caller, callee).
    sent: (Vec<String>, Vec<String>),
    /// Candidates each side received from natter (caller, callee).
    received: (Vec<String>, Vec<String>),
    /// The offer and answer SDPs as sent through natter.
    sdps: (String, String),
}

/// Places a call from `a` to `b` through natter with peers configured by `ice` and
/// `policy`, connects, passes data-channel messages both ways, hangs up, and checks the
/// end on both sides and the history entry.
async fn call(
    server: &Server,
    a: &Session,
    b: &Session,
    ice: (Vec<RTCIceServer>, Vec<RTCIceServer>),
    policy: RTCIceTransportPolicy,
    hangs_up: HangsUp,
) -> CallRecord {
    let t0 = Instant::now();
    let caller = Arc::new(server.device(a).await);
    let callee = Arc::new(server.device(b).await);

    // Caller: a connection with a data channel, an offer, and the call.
    let mut caller_peer = Peer::new("caller", ice.0, policy).await;
    let caller_dc = caller_peer
        .pc
        .create_data_channel("chat", None)
        .await
        .expect("caller: create the data channel");
    let (caller_dc_task, mut caller_dc_rx) = watch_channel(caller_dc.clone());
    let offer = caller_peer
        .pc
        .create_offer(None)
        .await
        .expect("caller: create the offer");
    caller_peer
        .pc
        .set_local_description(offer)
        .await
        .expect("caller: set the local description");
    let offer_sdp = local_sdp(&caller_peer).await;
    let info = caller
        .start_call(b.user_id, v1::CallMedia::Video, Some(offer_sdp.clone()))
        .await
        .unwrap_or_else(|e| panic!("start_call: {e}\n{}", server.log_tail(50)));
    assert_eq!(info.state(), v1::CallState::Ringing, "{info:?}");
    let call_id = info.call_id.clone();
    let caller_sent = Sent::default();
    let caller_fwd = forward_candidates(
        caller.clone(),
        call_id.clone(),
        caller_peer.candidates.take().expect("caller candidates"),
        caller_sent.clone(),
    );
    let caller_received = Arc::new(Mutex::new(Vec::new()));
    let (caller_pump, mut caller_events) = pump(
        caller.clone(),
        caller_peer.pc.clone(),
        call_id.clone(),
        false,
        caller_received.clone(),
    );

    // Callee: rings with the offer, answers.
    let ringing = common::next_matching(&callee, STEP, |ev| match ev {
        Event::Call(e) if e.r#type() == v1::CallEventType::Ringing => Some(e.clone()),
        _ => None,
    })
    .await;
    let rung = ringing.call.clone().expect("RINGING carries the call");
    assert_eq!(rung.call_id, call_id, "the callee rings for this call");
    assert_eq!(rung.caller_user, a.user_id.get());
    assert_eq!(rung.media(), v1::CallMedia::Video);
    let got_offer = ringing
        .description
        .clone()
        .expect("RINGING carries the offer");
    assert_eq!(got_offer.r#type(), v1::SdpType::Offer);
    assert_eq!(got_offer.sdp, offer_sdp, "the offer arrives unchanged");
    let mut callee_peer = Peer::new("callee", ice.1, policy).await;
    callee_peer
        .pc
        .set_remote_description(
            RTCSessionDescription::offer(got_offer.sdp).expect("the offer parses"),
        )
        .await
        .expect("callee: set the remote description");
    let answer = callee_peer
        .pc
        .create_answer(None)
        .await
        .expect("callee: create the answer");
    callee_peer
        .pc
        .set_local_description(answer)
        .await
        .expect("callee: set the local description");
    let answer_sdp = local_sdp(&callee_peer).await;
    let answered = callee
        .answer_call(&call_id, Some(answer_sdp.clone()))
        .await
        .unwrap_or_else(|e| panic!("answer_call: {e}\n{}", server.log_tail(50)));
    assert_eq!(answered.state(), v1::CallState::Active, "{answered:?}");
    let callee_sent = Sent::default();
    let callee_fwd = forward_candidates(
        callee.clone(),
        call_id.clone(),
        callee_peer.candidates.take().expect("callee candidates"),
        callee_sent.clone(),
    );
    let callee_received = Arc::new(Mutex::new(Vec::new()));
    let (callee_pump, mut callee_events) = pump(
        callee.clone(),
        callee_peer.pc.clone(),
        call_id.clone(),
        true,
        callee_received.clone(),
    );

    // The caller hears of the answer (its pump applies it).
    let answer_ev = next_pumped(
        &mut caller_events,
        "caller",
        "ANSWERED",
        server,
        |ev| match ev {
            Event::Call(e) if e.r#type() == v1::CallEventType::Answered => Some(e.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(answer_ev.from_user, b.user_id.get());
    assert_eq!(
        answer_ev.description.as_ref().map(|d| d.sdp.as_str()),
        Some(answer_sdp.as_str()),
        "the answer arrives unchanged"
    );
    let t_signalled = t0.elapsed();

    // Both connect.
    let connecting = async {
        tokio::join!(
            caller_peer.connected(server, &caller_sent),
            callee_peer.connected(server, &callee_sent)
        )
    };
    tokio::select! {
        _ = connecting => {}
        failure = first_failure(&mut caller_events) => panic!(
            "caller, while connecting: {failure}\n{}", server.log_tail(50)),
        failure = first_failure(&mut callee_events) => panic!(
            "callee, while connecting: {failure}\n{}", server.log_tail(50)),
    }
    let t_connected = t0.elapsed();
    assert!(
        caller_sent.errors().is_empty(),
        "{:?}",
        caller_sent.errors()
    );
    assert!(
        callee_sent.errors().is_empty(),
        "{:?}",
        callee_sent.errors()
    );

    // Data-channel messages both ways.
    let callee_dc = tokio::time::timeout(STEP, callee_peer.channels.recv())
        .await
        .expect("callee: the caller's data channel within the deadline")
        .expect("callee: a data channel");
    assert_eq!(callee_dc.label().await.expect("a label"), "chat");
    let (callee_dc_task, mut callee_dc_rx) = watch_channel(callee_dc.clone());
    // The caller's channel opens once SCTP is up.
    let opened = tokio::time::timeout(STEP, caller_dc_rx.recv()).await;
    assert!(
        matches!(opened, Ok(Some(Dc::Open))),
        "caller: the data channel did not open within {STEP:?}"
    );
    let t_open = t0.elapsed();
    let to_callee: Vec<String> = (0..MESSAGES)
        .map(|i| format!("caller->callee {i} {call_id}"))
        .collect();
    for m in &to_callee {
        caller_dc.send_text(m).await.expect("caller: send");
    }
    assert_eq!(
        texts(&mut callee_dc_rx, "callee", MESSAGES).await,
        to_callee
    );
    let to_caller: Vec<String> = (0..MESSAGES)
        .map(|i| format!("callee->caller {i} {call_id}"))
        .collect();
    for m in &to_caller {
        callee_dc.send_text(m).await.expect("callee: send");
    }
    assert_eq!(
        texts(&mut caller_dc_rx, "caller", MESSAGES).await,
        to_caller
    );
    let t_messages = t0.elapsed();

    // One side hangs up: it gets the end as the reply, the other as an event.
    let (hanger, hanger_name, other_events, other_name) = match hangs_up {
        HangsUp::Caller => (&caller, "caller", &mut callee_events, "callee"),
        HangsUp::Callee => (&callee, "callee", &mut caller_events, "caller"),
    };
    let ended = hanger
        .hangup_call(&call_id)
        .await
        .unwrap_or_else(|e| panic!("{hanger_name}: hangup_call: {e}\n{}", server.log_tail(50)));
    assert_eq!(ended.state(), v1::CallState::Ended, "{ended:?}");
    assert_eq!(ended.end_reason(), v1::CallEndReason::Hangup, "{ended:?}");
    assert!(ended.duration_ms > 0, "{ended:?}");
    let end_ev = next_pumped(other_events, other_name, "ENDED", server, |ev| match ev {
        Event::Call(e)
            if e.r#type() == v1::CallEventType::Ended
                && e.call.as_ref().is_some_and(|c| c.call_id == call_id) =>
        {
            Some(e.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(end_ev.reason(), v1::CallEndReason::Hangup, "{end_ev:?}");
    let end_info = end_ev.call.clone().expect("ENDED carries the call");
    assert_eq!(end_info.state(), v1::CallState::Ended, "{end_info:?}");
    assert_eq!(
        end_info.duration_ms, ended.duration_ms,
        "both see one duration"
    );
    // Hanging up closes the connections, as an app would on the end.
    let _ = caller_peer.pc.close().await;
    let _ = callee_peer.pc.close().await;

    // The call is in the conversation's history, for both users.
    let conversation = conv(a.user_id, b.user_id);
    for (who, client) in [("caller", &caller), ("callee", &callee)] {
        let deadline = tokio::time::Instant::now() + STEP;
        let entry = loop {
            let history = client
                .full_history(&conversation, 100)
                .await
                .unwrap_or_else(|e| panic!("{who}: history: {e}"));
            if let Some(m) = history.into_iter().find(|m| {
                m.kind() == v1::MessageKind::Call
                    && m.call.as_ref().is_some_and(|c| c.call_id == call_id)
            }) {
                break m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{who}: no history entry for call {call_id} within {STEP:?}\n{}",
                server.log_tail(50)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = entry.call.clone().expect("a CallLog");
        assert_eq!(
            entry.sender_user,
            a.user_id.get(),
            "the caller sends the entry"
        );
        assert!(entry.body.is_empty(), "{entry:?}");
        assert_eq!(log.media(), v1::CallMedia::Video, "{log:?}");
        assert_eq!(log.reason(), v1::CallEndReason::Hangup, "{log:?}");
        assert!(!log.missed, "an answered call is not missed: {log:?}");
        assert!(log.duration_ms > 0, "{log:?}");
        assert_eq!(log.duration_ms, ended.duration_ms, "{log:?}");
        assert!(!log.group, "{log:?}");
        assert_eq!(log.participants, 2, "{log:?}");
    }
    // The callee's device had the entry pushed live too.
    next_pumped(
        &mut callee_events,
        "callee",
        "the call's message",
        server,
        |ev| match ev {
            Event::Message(m)
                if m.kind() == v1::MessageKind::Call
                    && m.call.as_ref().is_some_and(|c| c.call_id == call_id) =>
            {
                Some(())
            }
            _ => None,
        },
    )
    .await;
    eprintln!(
        "call {call_id} ({policy:?}, {hangs_up:?} hangs up): signalled in {t_signalled:?}, \
         connected at {t_connected:?}, data channel open at {t_open:?}, messages done at {t_messages:?}, all done at {:?}; \
         duration {} ms",
        t0.elapsed(),
        ended.duration_ms
    );

    for task in [
        caller_fwd,
        callee_fwd,
        caller_pump,
        callee_pump,
        caller_dc_task,
        callee_dc_task,
    ] {
        task.abort();
    }
    let received = (
        caller_received.lock().unwrap().clone(),
        callee_received.lock().unwrap().clone(),
    );
    CallRecord {
        sent: (caller_sent.candidates(), callee_sent.candidates()),
        received,
        sdps: (offer_sdp, answer_sdp),
    }
}

/// True if an ICE candidate line is of type `typ`.
fn is_typ(candidate: &str, typ: &str) -> bool {
    let fields: Vec<&str> = candidate.split_whitespace().collect();
    fields.windows(2).any(|w| w[0] == "typ" && w[1] == typ)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webrtc_call_connects_through_natter_signalling() {
    bounded(60, async {
        let server = Server::start_with(&[("NATTER_CALL_RING_TIMEOUT_S", "30")]).await;
        let a = server.user("rtc_a").await;
        let b = server.user("rtc_b").await;
        let record = call(
            &server,
            &a,
            &b,
            (Vec::new(), Vec::new()),
            RTCIceTransportPolicy::All,
            HangsUp::Caller,
        )
        .await;
        // With no ICE servers the peers meet on their loopback host candidates, which
        // reached each other only through natter.
        for (who, sent) in [("caller", &record.sent.0), ("callee", &record.sent.1)] {
            assert!(
                !sent.is_empty(),
                "{who} trickled no candidate through natter"
            );
            assert!(sent.iter().all(|c| is_typ(c, "host")), "{who}: {sent:?}");
        }
        assert_eq!(
            record.received.1, record.sent.0,
            "the callee got the caller's candidates (held until the answer), in order"
        );
        assert_eq!(
            record.received.0, record.sent.1,
            "the caller got the callee's candidates, in order"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webrtc_call_relays_through_natter_turn() {
    bounded(60, async {
        let server = Server::start_with(&[
            ("NATTER_TURN_LISTEN", "127.0.0.1:0"),
            ("NATTER_CALL_RING_TIMEOUT_S", "30"),
        ])
        .await;
        let a = server.user("turn_a").await;
        let b = server.user("turn_b").await;
        let ice_a = fetch_ice_servers(&server, &a).await;
        let ice_b = fetch_ice_servers(&server, &b).await;

        // Wrong credentials get no relay: gathering completes with no candidate. The
        // right ones, from the same response, get one (the control).
        let t = Instant::now();
        let wrong_password = with_turn_credentials(&ice_a, |u, c| {
            (u.to_owned(), format!("{}x", c.trim_end_matches('=')))
        });
        // The password is an HMAC of the username: another user id with a's password.
        let other_user = with_turn_credentials(&ice_a, |u, c| {
            let (expiry, _) = u.split_once(':').expect("<expiry>:<user>");
            (format!("{expiry}:{}", b.user_id.get()), c.to_owned())
        });
        let (wrong, forged, right) = tokio::join!(
            gather_relay("wrong password", wrong_password),
            gather_relay("forged username", other_user),
            gather_relay("right credentials", ice_a.clone()),
        );
        assert!(
            wrong.is_empty(),
            "a wrong TURN password must get no relay candidate: {wrong:?}"
        );
        assert!(
            forged.is_empty(),
            "a username the password was not issued for must get no relay candidate: \
             {forged:?}"
        );
        assert!(
            !right.is_empty() && right.iter().all(|c| is_typ(c, "relay")),
            "the issued credentials get a relay candidate: {right:?}\n{}",
            server.log_tail(50)
        );
        eprintln!("credential checks took {:?}", t.elapsed());

        let record = call(
            &server,
            &a,
            &b,
            (ice_a, ice_b),
            RTCIceTransportPolicy::Relay,
            HangsUp::Callee,
        )
        .await;
        for (who, sent, sdp) in [
            ("caller", &record.sent.0, &record.sdps.0),
            ("callee", &record.sent.1, &record.sdps.1),
        ] {
            assert!(
                !sent.is_empty(),
                "{who} trickled no candidate through natter"
            );
            assert!(
                sent.iter().all(|c| is_typ(c, "relay")),
                "{who} sent a candidate that is not a relay: {sent:?}"
            );
            // Relayed addresses are natter's relay sockets on loopback.
            assert!(
                sent.iter().all(|c| c.contains(" 127.0.0.1 ")),
                "{who}: {sent:?}"
            );
            let in_sdp = sdp_candidates(sdp);
            assert!(
                in_sdp.iter().all(|c| is_typ(c, "relay")),
                "{who}'s SDP carries a candidate that is not a relay: {in_sdp:?}"
            );
        }
        assert_eq!(record.received.1, record.sent.0);
        assert_eq!(record.received.0, record.sent.1);
    })
    .await;
}
