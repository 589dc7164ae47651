//! The frame codec: one envelope, two encodings. Binary frames carry protobuf
//! (`natter.v1.proto`), text frames the proto3 JSON mapping (`natter.v1.json`). The
//! server and the Rust client both use this, so they cannot disagree.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO};

/// Which encoding a connection speaks, chosen by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    Proto,
    Json,
}

/// An encoded frame, ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    Binary(Bytes),
    Text(String),
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid protobuf: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {got} frame on a {expected} connection")]
    WrongKind {
        got: &'static str,
        expected: &'static str,
    },
}

impl WireFormat {
    pub fn from_subprotocol(p: &str) -> Option<WireFormat> {
        match p {
            SUBPROTOCOL_PROTO => Some(WireFormat::Proto),
            SUBPROTOCOL_JSON => Some(WireFormat::Json),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            WireFormat::Proto => SUBPROTOCOL_PROTO,
            WireFormat::Json => SUBPROTOCOL_JSON,
        }
    }

    pub fn encode<M: prost::Message + Serialize>(self, frame: &M) -> Encoded {
        match self {
            WireFormat::Proto => Encoded::Binary(Bytes::from(frame.encode_to_vec())),
            // Serializing generated types to a String cannot fail: no maps with
            // non-string keys, no non-finite floats in the schema.
            WireFormat::Json => Encoded::Text(serde_json::to_string(frame).unwrap_or_default()),
        }
    }

    /// Turns an already protobuf-encoded frame into this format.
    pub fn transcode<M: prost::Message + Serialize + Default>(
        self,
        proto_bytes: Bytes,
    ) -> Result<Encoded, DecodeError> {
        match self {
            WireFormat::Proto => Ok(Encoded::Binary(proto_bytes)),
            WireFormat::Json => Ok(self.encode(&M::decode(proto_bytes)?)),
        }
    }

    pub fn decode_binary<M: prost::Message + Default>(self, data: &[u8]) -> Result<M, DecodeError> {
        match self {
            WireFormat::Proto => Ok(M::decode(data)?),
            WireFormat::Json => Err(DecodeError::WrongKind {
                got: "binary",
                expected: "JSON (text)",
            }),
        }
    }

    pub fn decode_text<M: DeserializeOwned>(self, text: &str) -> Result<M, DecodeError> {
        match self {
            WireFormat::Json => Ok(serde_json::from_str(text)?),
            WireFormat::Proto => Err(DecodeError::WrongKind {
                got: "text",
                expected: "protobuf (binary)",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ClientFrame, Send, client_frame::Body};

    fn send_frame() -> ClientFrame {
        ClientFrame {
            id: 9,
            body: Some(Body::Send(Send {
                client_msg_id: "m1".into(),
                to_user: 12345678901234,
                body: Bytes::from_static(b"hi"),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn round_trips_in_both_formats() {
        let f = send_frame();
        let Encoded::Binary(b) = WireFormat::Proto.encode(&f) else {
            panic!("binary")
        };
        assert_eq!(
            WireFormat::Proto.decode_binary::<ClientFrame>(&b).unwrap(),
            f
        );
        let Encoded::Text(t) = WireFormat::Json.encode(&f) else {
            panic!("text")
        };
        // proto3 JSON: camelCase names, 64-bit ints as strings, bytes as base64.
        assert!(t.contains("\"clientMsgId\":\"m1\""), "{t}");
        assert!(t.contains("\"toUser\":\"12345678901234\""), "{t}");
        assert!(t.contains("\"body\":\"aGk=\""), "{t}");
        assert_eq!(WireFormat::Json.decode_text::<ClientFrame>(&t).unwrap(), f);
    }

    #[test]
    fn json_accepts_field_names_and_numbers_and_ignores_unknown() {
        let f: ClientFrame = WireFormat::Json
            .decode_text(
                r#"{"id":3,"send":{"client_msg_id":"a","to_user":5,"body":"aGk="},"future":1}"#,
            )
            .unwrap();
        assert_eq!(f.id, 3);
        let f: ClientFrame = WireFormat::Json
            .decode_text(r#"{"id":"4","shout":{}}"#)
            .unwrap();
        assert!(f.body.is_none(), "unknown frame types decode to no body");
    }

    #[test]
    fn wrong_kinds_and_garbage_are_errors() {
        assert!(WireFormat::Json.decode_binary::<ClientFrame>(b"x").is_err());
        assert!(WireFormat::Proto.decode_text::<ClientFrame>("{}").is_err());
        assert!(
            WireFormat::Proto
                .decode_binary::<ClientFrame>(&[0xff, 0xff, 0xff])
                .is_err()
        );
        assert!(
            WireFormat::Json
                .decode_text::<ClientFrame>("{not json")
                .is_err()
        );
    }
}
