//! The cluster envelope: whatever arrives from Redis.

use crate::cluster::envelope::{decode, is_broadcast, is_history_broadcast, sender, Envelope};

/// Decodes arbitrary bytes as a bus message. Invariants: no panic; the
/// 10-byte peeks agree with the full decode (a history broadcast's
/// position reads back as itself); a message that decodes is
/// whole (re-encoding it gives bytes that decode to the same encoding,
/// so nothing was half-read or invented), and a broadcast's JSON payload
/// is one valid JSON object (it is spliced into clients' frames as is).
pub fn cluster_envelope(data: &[u8]) {
    let peeked = sender(data);
    let broadcast = is_broadcast(data);
    let history = is_history_broadcast(data);
    let Ok(received) = decode(data) else {
        return;
    };
    assert_eq!(
        peeked,
        Some(received.from),
        "sender() disagrees with decode()"
    );
    assert_eq!(
        broadcast,
        matches!(received.envelope, Envelope::Broadcast(_)),
        "is_broadcast() disagrees with decode()"
    );
    assert_eq!(
        history,
        matches!(received.envelope, Envelope::HistoryBroadcast(_)),
        "is_history_broadcast() disagrees with decode()"
    );
    let encoded = received.envelope.encode(received.from);
    let again = decode(&encoded).expect("a decoded envelope, encoded again, decodes");
    assert_eq!(
        again.envelope.encode(again.from),
        encoded,
        "encode ∘ decode is not stable"
    );
    if let Envelope::HistoryBroadcast(broadcast) = &received.envelope {
        // Its position was parsed, so it prints back as a position.
        let position = broadcast
            .position()
            .expect("a history broadcast has a position");
        assert_eq!(
            crate::history::Position::parse(&position.to_string()).as_ref(),
            Some(position),
            "a position that does not read back"
        );
    }
    if let Envelope::Broadcast(broadcast) | Envelope::HistoryBroadcast(broadcast) =
        &received.envelope
    {
        if let crate::protocol::message::Payload::Json(text) = broadcast.payload() {
            let value: Result<&serde_json::value::RawValue, _> = serde_json::from_slice(text);
            assert!(
                value.is_ok_and(|v| v.get().trim_start().starts_with('{')),
                "a JSON payload that is no JSON object"
            );
        }
    }
}
