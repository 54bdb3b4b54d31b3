//! Base64 in place: a FI payload is decoded, decrypted and re-encoded inside the buffer its request
//! arrived in, so a request holds about one copy of its data at any moment (the body budget counts it),
//! not the four a decode–decrypt–encode–serialize chain would allocate.
//!
//! - [`decode_in_place`] turns the base64 text at `[start, end)` into bytes at `[start, …)`: each decoded
//!   chunk lands at or before the text it came from, so nothing not yet read is overwritten.
//! - [`render_in_place`] lays out an answer made of literal pieces and base64 of byte ranges of the
//!   buffer. The ranges are first packed to the front, in order; the answer is then written from its end
//!   backwards. Every piece's output starts at or after the packed bytes it encodes (base64 is longer than
//!   its input, literals only push it further), so writing backwards never overwrites a byte still to be
//!   read; each chunk is copied to the stack before its own output is written over it.

use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

/// Base64 text decoded per step (a multiple of 4), and the bytes it decodes to.
const TEXT_CHUNK: usize = 4096;
const BYTES_CHUNK: usize = TEXT_CHUNK / 4 * 3;

/// The standard alphabet, padding optional, non-zero trailing bits tolerated (as Java's decoder does).
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
pub fn decode_in_place(buf: &mut [u8], range: Range<usize>) -> Result<Range<usize>, NotBase64> {
    let text = buf.get(range.clone()).ok_or(NotBase64)?;
    // Padding may only end the text: a `=` inside would otherwise be accepted by a chunk boundary.
    let body_end = text
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |last| last + 1);
    if text.len() - body_end > 2 || text[..body_end].contains(&b'=') {
        return Err(NotBase64);
    }
    let mut chunk = [0u8; TEXT_CHUNK];
    let mut read = range.start;
    let mut written = range.start;
    while read < range.end {
        let take = TEXT_CHUNK.min(range.end - read);
        chunk[..take].copy_from_slice(&buf[read..read + take]);
        let out = &mut buf[written..read + take];
        let n = LENIENT
            .decode_slice(&chunk[..take], out)
            .map_err(|_| NotBase64)?;
        read += take;
        written += n;
    }
    Ok(range.start..written)
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
    let mut packed = 0;
    for piece in pieces.iter_mut() {
        if let Piece::Base64(range) = piece {
            let len = range.len();
            buf.copy_within(range.clone(), packed);
            *range = packed..packed + len;
            packed += len;
        }
    }
    // 2. Where each piece goes.
    let total: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(bytes) => bytes.len(),
            Piece::Base64(range) => encoded_len(range.len()),
        })
        .sum();
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

/// Encodes `buf[from]` to `buf[to..]`, last chunk first; `to >= from.start`.
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
        let _ =
            general_purpose::STANDARD.encode_slice(&chunk[..take], &mut buf[out_start..out_end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
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
