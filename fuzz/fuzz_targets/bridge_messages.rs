//! Fuzzes the split-mode link's message parser: Message::parse on arbitrary bytes must never
//! panic; whatever parses must re-emit to bytes that parse to the same value (and emit the
//! same bytes again); whatever fails must yield an error reply that itself parses.
#![no_main]

use kvs_bridge::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(message) => {
            let bytes = message.to_bytes();
            let again = Message::parse(&bytes).expect("an emitted message parses");
            assert_eq!(again, message);
            assert_eq!(again.to_bytes(), bytes, "emission is canonical");
        }
        Err(error) => {
            if let Some(reply) = error.reply() {
                let parsed = Message::parse(&reply.to_bytes()).expect("an error reply parses");
                assert_eq!(parsed, reply);
            }
        }
    }
});
