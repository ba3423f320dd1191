//! The Phoenix Channels protocol, free of I/O: messages in, messages out.
//!
//! | file | what lives there |
//! | --- | --- |
//! | [`message`] | the message model: [`message::ClientMessage`], refs kept as raw JSON, topic/event names, payloads, the serializer enum, the JSON string escaper |
//! | [`vsn`] | `vsn` negotiation: which serializer a connection speaks |
//! | [`decode`] | client→server frames: V1 objects, V2 arrays, V2 binary pushes |
//! | [`json_object`] | picking fields out of a JSON object while keeping every value's exact text |
//! | [`encode`] | server→client bodies: V1/V2 JSON text and the three V2 binary kinds |
//! | [`channels`] | the sans-IO channel state machine (join, leave, heartbeat, replies), fed decoded messages and returning actions |
//!
//! Nothing here touches a socket: the shard decodes a frame's bytes with
//! [`decode`], hands the message to [`channels`], and frames what [`encode`]
//! writes.

pub mod channels;
pub mod decode;
pub mod encode;
pub mod json_object;
pub mod message;
pub mod vsn;

/// The decoders are fed untrusted bytes: noise and mutated valid frames must
/// give `Ok` or `Err`, never a panic.
#[cfg(test)]
mod no_panic_tests {
    use crate::protocol::decode::{decode_binary, decode_text};
    use crate::protocol::message::Serializer;

    /// The spec's client push example (§4.3).
    const CLIENT_PUSH: [u8; 22] = [
        0x00, 0x01, 0x01, 0x06, 0x06, 0x33, 0x37, 0x72, 0x6f, 0x6f, 0x6d, 0x3a, 0x31, 0x75, 0x70,
        0x6c, 0x6f, 0x61, 0x64, 0x01, 0x02, 0x03,
    ];

    /// xorshift64: deterministic pseudo-random bytes without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Bytes that make JSON-ish noise more likely than uniform bytes would.
    const ALPHABET: &[u8] = b"[]{}\",:\\ 0123456789-+.eEtrufalsn\x00\x1f\x7f\xc3\xa9\xff";

    fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        let mut bytes = base.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(4) {
                0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
                _ => bytes.truncate(at),
            }
        }
        bytes
    }

    #[test]
    fn never_panics_on_noise_or_mutations() {
        let valid_text: [&[u8]; 4] = [
            br#"["3","3","room:lobby","phx_join",{"nick":"ann","n":[1,2.5,null,true]}]"#,
            br#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":7}"#,
            br#"[null,"4","phoenix","heartbeat",{}]"#,
            br#"[{"a":{}},[],1e5,"\u00e9\n",{"k":"v"},6]"#,
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut decoded = 0;
        for round in 0..4000 {
            let text = if round % 2 == 0 {
                let len = rng.below(48);
                (0..len)
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                    .collect()
            } else {
                let base = valid_text[rng.below(valid_text.len())];
                mutate(&mut rng, base)
            };
            for serializer in [Serializer::V1, Serializer::V2] {
                decoded += usize::from(decode_text(serializer, &mut text.clone()).is_ok());
            }
            let frame = if round % 2 == 0 {
                let len = rng.below(24);
                (0..len).map(|_| rng.next() as u8 % 8).collect()
            } else {
                mutate(&mut rng, &CLIENT_PUSH)
            };
            decoded += usize::from(decode_binary(&frame).is_ok());
        }
        // The mutations leave some frames valid, so both paths ran to the end.
        assert!(decoded > 100, "only {decoded} decoded");
    }
}
