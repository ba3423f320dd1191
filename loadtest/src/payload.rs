//! The measured payload every load message carries.
//!
//! `{"s":SENDER,"q":SEQ,"w":WINDOW,"t":SENT_NS,"p":"xxx…"}`: the sender slot,
//! the sender's sequence number, the measurement window, the send time on
//! this process's [`crate::clock`], and padding up to the requested size.
//! Fields are found by key, not by position, because a server that re-encodes
//! JSON (Phoenix does) may reorder them; the padding is only `x`, so it can
//! never look like a key.

/// The fields of a measured payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which sender slot of the receiver's topic sent it (0 for `fanout`).
    pub sender: u32,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// The measurement window it was sent in.
    pub window: u32,
    /// Send time in nanoseconds on this process's clock.
    pub sent_ns: u64,
}

/// Writes the payload JSON for `stamp`, padded to at least `size` bytes.
pub fn write(out: &mut Vec<u8>, stamp: Stamp, size: usize) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(
        out,
        "{{\"s\":{},\"q\":{},\"w\":{},\"t\":{},\"p\":\"",
        stamp.sender, stamp.seq, stamp.window, stamp.sent_ns
    );
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// Finds the stamp inside a received message (the whole Phoenix message may
/// be passed: the keys are unique to the payload). `None` if it is not one.
pub fn parse(message: &[u8]) -> Option<Stamp> {
    Some(Stamp {
        sender: field(message, b"\"s\":")? as u32,
        seq: field(message, b"\"q\":")?,
        window: field(message, b"\"w\":")? as u32,
        sent_ns: field(message, b"\"t\":")?,
    })
}

fn field(message: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(message, key)? + key.len();
    let digits = message[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value = 0u64;
    for &digit in &message[at..at + digits] {
        value = value * 10 + u64::from(digit - b'0');
    }
    Some(value)
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match haystack[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(offset) => {
                i += offset;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_to_size() {
        let stamp = Stamp {
            sender: 3,
            seq: 12345,
            window: 2,
            sent_ns: 987654321,
        };
        let mut out = Vec::new();
        write(&mut out, stamp, 64);
        assert_eq!(out.len(), 64);
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
        assert_eq!(parse(&out), Some(stamp));
        let mut big = Vec::new();
        write(&mut big, stamp, 1024);
        assert_eq!(big.len(), 1024);
        assert_eq!(parse(&big), Some(stamp));
    }

    #[test]
    fn finds_fields_in_any_order_inside_a_message() {
        let message = br#"[null,null,"bench:0","msg",{"p":"xx","q":7,"s":0,"t":55,"w":1}]"#;
        assert_eq!(
            parse(message),
            Some(Stamp {
                sender: 0,
                seq: 7,
                window: 1,
                sent_ns: 55
            })
        );
        assert_eq!(parse(br#"{"status":"ok"}"#), None);
    }
}
