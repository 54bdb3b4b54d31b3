//! Base64 in place: a FI payload is decoded, decrypted and re-encoded inside the buffer its request
//! arrived in, so a request holds about one copy of its data at any moment (the body budget counts it),
//! not the four a decode–decrypt–encode–serialize chain would allocate.
//!
//! - [`decode_in_place`] turns the base64 text at `[start, end)` into bytes at `[start, …)`: each decoded
//!   block lands at or before the text it came from, so nothing not yet read is overwritten.
//! - [`render_in_place`] lays out an answer made of literal pieces and base64 of byte ranges of the
//!   buffer. The ranges are first packed to the front, in order (a range already close enough to where its
//!   text goes stays put: a large payload is not moved first); the answer is then written from its end
//!   backwards. Every piece's output starts at or after the packed bytes it encodes (base64 is longer than
//!   its input, literals only push it further), or at most one chunk's growth before a range left in
//!   place, and ends at or after them, so writing backwards never overwrites a byte still to be read;
//!   each chunk is copied to the stack before its own output is written over it.
//!
//! Both directions run on `base64-simd` (AVX2/SSSE3 picked at run time, a scalar fallback elsewhere):
//! base64 was most of a large decrypt's time, several times AES-GCM's.

use std::ops::Range;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

/// Bytes encoded per step (a multiple of 3, so only the last chunk is padded), and the text they make.
const BYTES_CHUNK: usize = 12 * 1024;
const TEXT_CHUNK: usize = BYTES_CHUNK / 3 * 4;

/// The standard alphabet, padding optional, non-zero trailing bits tolerated (as Java's decoder does).
/// It defines what [`decode_in_place`] accepts, and decodes the last group of the text.
pub const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The text is not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64;

/// Decodes the base64 text at `buf[range]` into `buf[range.start..]`; returns the decoded range.
/// Accepts exactly what [`LENIENT`] accepts.
///
/// The text is split into its last group of 1 to 4 characters and the full groups before it. The
/// full groups hold no padding and leave no trailing bits, so every decoder agrees on them: they go
/// to the SIMD decoder, in place (it writes each block's bytes behind the text it has already read).
/// All of the leniency (padding present or not, non-zero trailing bits, a stray `=`) lives in the
/// last group, which [`LENIENT`] decodes first, to the stack, since the bulk's output may reach it.
pub fn decode_in_place(buf: &mut [u8], range: Range<usize>) -> Result<Range<usize>, NotBase64> {
    let text = buf.get_mut(range.clone()).ok_or(NotBase64)?;
    if text.is_empty() {
        return Ok(range.start..range.start);
    }
    let bulk = (text.len() - 1) / 4 * 4;
    let (full_groups, last_group) = text.split_at_mut(bulk);
    let mut tail = [0u8; 3];
    let tail_len = LENIENT
        .decode_slice(&*last_group, &mut tail)
        .map_err(|_| NotBase64)?;
    // The alphabet has no `=`, so a `=` anywhere before the last group is refused here.
    let decoded = base64_simd::STANDARD_NO_PAD
        .decode_inplace(full_groups)
        .map_err(|_| NotBase64)?
        .len();
    let end = range.start + decoded;
    buf[end..end + tail_len].copy_from_slice(&tail[..tail_len]);
    Ok(range.start..end + tail_len)
}

/// Length of the padded base64 of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// One piece of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes written as they are (JSON punctuation, small fields).
    Literal(Vec<u8>),
    /// The padded base64 of these bytes of the buffer.
    Base64(Range<usize>),
}

/// Replaces `buf` with the answer `pieces` describe. Ranges must be in increasing order and disjoint.
pub fn render_in_place(buf: &mut Vec<u8>, pieces: &mut [Piece]) {
    // 1. Pack the ranges to the front, in order (each moves towards the front, never past a later one).
    //    A range that may be encoded where it lies stays there (a large payload is not moved first):
    //    its text must start at most a chunk's growth before its bytes (each chunk's text then lands on
    //    bytes already read) and end at or after them (the pieces after it, written first, then miss
    //    them). The ranges before it end before its text starts, so its text overwrites none of them.
    let mut packed = 0;
    let mut out = 0;
    for piece in pieces.iter_mut() {
        match piece {
            Piece::Literal(bytes) => out += bytes.len(),
            Piece::Base64(range) => {
                let len = range.len();
                let text_end = out + encoded_len(len);
                if range.start <= out + (TEXT_CHUNK - BYTES_CHUNK) && range.end <= text_end {
                    packed = range.end;
                } else {
                    buf.copy_within(range.clone(), packed);
                    *range = packed..packed + len;
                    packed += len;
                }
                out = text_end;
            }
        }
    }
    // 2. Where each piece goes.
    let total = out;
    if buf.len() < total {
        buf.resize(total, 0);
    }
    // 3. From the end backwards.
    let mut end = total;
    for piece in pieces.iter().rev() {
        match piece {
            Piece::Literal(bytes) => {
                buf[end - bytes.len()..end].copy_from_slice(bytes);
                end -= bytes.len();
            }
            Piece::Base64(range) => {
                let start = end - encoded_len(range.len());
                encode_backwards(buf, range.clone(), start);
                end = start;
            }
        }
    }
    buf.truncate(total);
}

/// Encodes `buf[from]` to `buf[to..]`, last chunk first; `to` is at most `TEXT_CHUNK - BYTES_CHUNK`
/// before `from.start`, so each chunk's text lands on bytes already read (its own are copied out first).
fn encode_backwards(buf: &mut [u8], from: Range<usize>, to: usize) {
    let len = from.len();
    let chunks = len.div_ceil(BYTES_CHUNK);
    let mut chunk = [0u8; BYTES_CHUNK];
    for index in (0..chunks).rev() {
        let offset = index * BYTES_CHUNK;
        let take = BYTES_CHUNK.min(len - offset);
        let source = from.start + offset;
        chunk[..take].copy_from_slice(&buf[source..source + take]);
        let out_start = to + offset / 3 * 4;
        let out_end = out_start + encoded_len(take);
        // Only the last chunk can be short of a multiple of 3, so only it is padded.
        let _ = base64_simd::STANDARD.encode(
            &chunk[..take],
            base64_simd::Out::from_slice(&mut buf[out_start..out_end]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose;
    use proptest::prelude::*;

    /// Decodes `text` placed between a prefix and a suffix with both implementations: the answers must
    /// agree, and nothing outside the text may change.
    fn check_against_engine(text: &[u8]) -> Result<(), TestCaseError> {
        let expected = LENIENT.decode(text).ok();
        let mut buf = b"{\"x\":\"".to_vec();
        let start = buf.len();
        buf.extend_from_slice(text);
        let end = buf.len();
        buf.extend_from_slice(b"\"}");
        let before = buf.clone();
        let got = decode_in_place(&mut buf, start..end);
        prop_assert_eq!(&buf[..start], &before[..start]);
        prop_assert_eq!(&buf[end..], &before[end..]);
        match (got, expected) {
            (Ok(range), Some(bytes)) => {
                prop_assert_eq!(range.start, start);
                prop_assert_eq!(
                    &buf[range],
                    &bytes[..],
                    "{:?}",
                    String::from_utf8_lossy(text)
                );
            }
            (Err(NotBase64), None) => {}
            (got, expected) => prop_assert!(
                false,
                "{:?}: in place {:?}, engine {:?}",
                String::from_utf8_lossy(text),
                got,
                expected
            ),
        }
        Ok(())
    }

    /// What is done to a valid text before decoding it.
    #[derive(Debug, Clone)]
    enum Change {
        None,
        /// Drop the padding.
        Unpad,
        /// Change the last character to another of the alphabet (trailing bits, usually).
        Last(u8),
        /// Put this byte (`=`, whitespace, a letter, anything) at this position.
        Insert(usize, u8),
        /// Overwrite the byte at this position.
        Replace(usize, u8),
        /// Cut the text to this length (of any remainder modulo 4).
        Truncate(usize),
        /// Add `=` at the end, one to three times.
        Pad(usize),
    }

    fn change() -> impl Strategy<Value = Change> {
        let byte = prop_oneof![
            Just(b'='),
            Just(b' '),
            Just(b'\n'),
            Just(b'\r'),
            Just(b'\t'),
            Just(b'-'),
            Just(b'_'),
            Just(b'A'),
            any::<u8>()
        ];
        prop_oneof![
            Just(Change::None),
            Just(Change::Unpad),
            (0u8..64).prop_map(Change::Last),
            (any::<usize>(), byte.clone()).prop_map(|(at, b)| Change::Insert(at, b)),
            (any::<usize>(), byte).prop_map(|(at, b)| Change::Replace(at, b)),
            any::<usize>().prop_map(Change::Truncate),
            (1usize..4).prop_map(Change::Pad),
        ]
    }

    fn apply(mut text: Vec<u8>, change: &Change) -> Vec<u8> {
        let alphabet = base64::alphabet::STANDARD.as_str().as_bytes();
        match *change {
            Change::None => {}
            Change::Unpad => text.retain(|&b| b != b'='),
            Change::Last(c) => {
                let body = text.iter().rposition(|&b| b != b'=');
                if let Some(at) = body {
                    text[at] = alphabet[usize::from(c)];
                }
            }
            Change::Insert(at, b) => text.insert(at % (text.len() + 1), b),
            Change::Replace(at, b) => {
                if !text.is_empty() {
                    let at = at % text.len();
                    text[at] = b;
                }
            }
            Change::Truncate(len) => text.truncate(len % (text.len() + 1)),
            Change::Pad(n) => text.extend(std::iter::repeat_n(b'=', n)),
        }
        text
    }

    fn naive(buf: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Base64(range) => out.extend_from_slice(
                    general_purpose::STANDARD
                        .encode(&buf[range.clone()])
                        .as_bytes(),
                ),
            }
        }
        out
    }

    #[test]
    fn decoding_in_place_matches_the_engine_and_refuses_what_it_refuses() {
        for len in [0, 1, 2, 3, 100, 3071, 3072, 3073, 10_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let text = general_purpose::STANDARD.encode(&data);
            let mut buf = format!("{{\"x\":\"{text}\"}}").into_bytes();
            let range = 6..6 + text.len();
            let out = decode_in_place(&mut buf, range).unwrap();
            assert_eq!(&buf[out], &data[..], "{len}");
        }
        for bad in ["a", "ab=c", "a!bc", "abc===", "YQ==YQ=="] {
            let mut buf = bad.as_bytes().to_vec();
            assert_eq!(
                decode_in_place(&mut buf, 0..bad.len()),
                Err(NotBase64),
                "{bad}"
            );
        }
        // Unpadded text is accepted, as some peers send it.
        let mut buf = b"YWI".to_vec();
        let out = decode_in_place(&mut buf, 0..3).unwrap();
        assert_eq!(&buf[out], b"ab");
    }

    #[test]
    fn decoding_in_place_agrees_with_the_engine_on_every_edge() {
        let mut cases: Vec<Vec<u8>> = [
            // Padding: none, one, two, one where two belong, three, and padding alone.
            "",
            "YQ",
            "YQ=",
            "YQ==",
            "YWI",
            "YWI=",
            "YWI==",
            "YWJj",
            "YWJj=",
            "YWJj==",
            "YQ===",
            "=",
            "==",
            "====",
            "YWJjZA",
            "YWJjZA==",
            "YWJjZGU",
            "YWJjZGU=",
            // Non-zero trailing bits (tolerated, as Java's decoder does).
            "YR",
            "YR==",
            "YWJ",
            "YWJ=",
            "YWK",
            "YWK=",
            "/w",
            "//8",
            "///",
            // A length of 1 modulo 4.
            "Y",
            "YWJjZ",
            "YWJjZ=",
            "YWJjZ==",
            "YWJjZGVmZ",
            // `=` where it cannot be.
            "ab=c",
            "YQ==YQ==",
            "=YWJj",
            "YW=j",
            "Y=Jj",
            "YWJj=YWJj",
            "YQ=a",
            // Whitespace anywhere.
            " YWJj",
            "YWJj ",
            "YW Jj",
            "YWJj\n",
            "YWJj\r\n",
            "\tYWJj",
            "YWJj\nYWJj",
            "YQ= =",
            // Other alphabets and bytes.
            "YW-j",
            "YW_j",
            "a!bc",
            "YWJ\u{0}",
            "YWJ\u{7f}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Around the SIMD decoder's blocks (32 characters, 38 for the loop) and the old 4096-character
        // chunks: every length near them, valid and with a fault in the last group or the last block.
        for len in (0..140).chain(4090..4100).chain(8188..8196) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            for engine in [general_purpose::STANDARD, general_purpose::STANDARD_NO_PAD] {
                let text = engine.encode(&data).into_bytes();
                cases.push(text.clone());
                for at in [
                    text.len().saturating_sub(1),
                    text.len().saturating_sub(5),
                    text.len() / 2,
                ] {
                    for b in [b'=', b' ', b'\n', b'*'] {
                        let mut bad = text.clone();
                        if let Some(c) = bad.get_mut(at) {
                            *c = b;
                            cases.push(bad);
                        }
                    }
                }
                cases.push(apply(text.clone(), &Change::Last(1)));
            }
        }
        for case in cases {
            check_against_engine(&case).unwrap();
        }
    }

    proptest! {
        #[test]
        fn decoding_in_place_agrees_with_the_engine_on_changed_text(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            padded in any::<bool>(),
            changes in proptest::collection::vec(change(), 0..3),
        ) {
            let engine = if padded { general_purpose::STANDARD } else { general_purpose::STANDARD_NO_PAD };
            let text = changes.iter().fold(engine.encode(&data).into_bytes(), apply);
            check_against_engine(&text)?;
        }

        #[test]
        fn decoding_in_place_agrees_with_the_engine_on_any_text(
            text in proptest::collection::vec(
                prop_oneof![
                    8 => proptest::sample::select(base64::alphabet::STANDARD.as_str().as_bytes().to_vec()),
                    1 => proptest::sample::select(b"= \n\r\t-_.".to_vec()),
                ],
                0..80,
            ),
        ) {
            check_against_engine(&text)?;
        }

        #[test]
        fn decoding_in_place_agrees_with_the_engine_on_long_text(
            data in proptest::collection::vec(any::<u8>(), 3000..13000),
            change in change(),
        ) {
            check_against_engine(&apply(general_purpose::STANDARD.encode(&data).into_bytes(), &change))?;
        }

        #[test]
        fn rendering_in_place_equals_rendering_anew_with_ranges_anywhere(
            sizes in proptest::collection::vec((0usize..60_000, 0usize..9000, 0usize..6000), 1..4),
            tail in 0usize..40,
        ) {
            // Large ranges far behind or just behind where their text goes: some are encoded where they
            // lie, some are moved first, in any mix.
            let mut buf = Vec::new();
            let mut pieces = Vec::new();
            for (n, (len, gap, lit)) in sizes.iter().enumerate() {
                buf.extend(std::iter::repeat_n(b'.', *gap));
                let start = buf.len();
                buf.extend((0..*len).map(|i| (i * 13 + n) as u8));
                pieces.push(Piece::Literal(vec![b'L'; *lit]));
                pieces.push(Piece::Base64(start..buf.len()));
            }
            buf.extend(std::iter::repeat_n(b'.', tail));
            pieces.push(Piece::Literal(b"\"}".to_vec()));
            let expected = naive(&buf, &pieces);
            render_in_place(&mut buf, &mut pieces);
            prop_assert_eq!(buf, expected);
        }

        #[test]
        fn rendering_in_place_equals_rendering_anew(
            sizes in proptest::collection::vec((0usize..9000, 0usize..40, 0usize..40), 1..5),
        ) {
            // Ranges separated by gaps (the JSON around each field), literals of any length between.
            let mut buf = Vec::new();
            let mut pieces = Vec::new();
            for (n, (len, gap, lit)) in sizes.iter().enumerate() {
                buf.extend(std::iter::repeat_n(b'.', *gap));
                let start = buf.len();
                buf.extend((0..*len).map(|i| (i + n) as u8));
                pieces.push(Piece::Literal(vec![b'L'; *lit]));
                pieces.push(Piece::Base64(start..buf.len()));
            }
            pieces.push(Piece::Literal(b"}".to_vec()));
            let expected = naive(&buf, &pieces);
            render_in_place(&mut buf, &mut pieces);
            prop_assert_eq!(buf, expected);
        }
    }
}
