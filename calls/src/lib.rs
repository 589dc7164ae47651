//! natter's voice and video calls. natter carries the signalling of WebRTC calls (the
//! media flows between the devices, directly or through a TURN relay):
//!
//! * [`service`]: the call state machine on the bus (`natter.call.request`,
//!   `natter.call.device`): ringing every online device of the callee, answered on one
//!   (the others stop: "answered elsewhere"), declined, busy, no answer, cancelled, hung
//!   up, dropped; SDP and ICE relayed only between devices in the call; group calls as a
//!   mesh of up to [`service::Config::max_participants`]; a history entry
//!   (`MESSAGE_KIND_CALL`) when a call ends.
//! * [`ice`]: `GET /v1/calls/ice-servers`, STUN/TURN URLs with time-limited credentials
//!   (the TURN REST API convention: HMAC-SHA1 of `<expiry>:<user>` under a shared secret).
//! * [`turn`]: natter's own TURN relay (`natter turn`), checking those credentials.

pub mod ice;
pub mod service;
pub mod turn;
