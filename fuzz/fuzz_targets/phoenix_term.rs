#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder::fuzzing::phoenix_term(data));
