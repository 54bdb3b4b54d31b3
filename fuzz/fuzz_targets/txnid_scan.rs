//! Any bytes as the head of a request body: the bounded `txnid` scan of a ReBIT error answer. Nothing may
//! panic; what it finds is a short, plain, visible-ASCII string that occurs in the first 64 KiB.
#![no_main]

use aa_token_broker::rebit::scan::{MAX_TXNID_LEN, TXNID_SCAN_BYTES, scan_txnid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(found) = scan_txnid(data) {
        assert!(!found.is_empty() && found.len() <= MAX_TXNID_LEN);
        assert!(found.bytes().all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'"'));
        let head = &data[..data.len().min(TXNID_SCAN_BYTES)];
        assert!(
            head.windows(found.len()).any(|w| w == found.as_bytes()),
            "found text that is not in the scanned head"
        );
    }
});
