//! The tokens verified most recently, by their bytes: a small table in front of the result cache.
//!
//! A forward-auth proxy presents the same few tokens on every call. The result cache ([`super::Verifier`])
//! is keyed by the token's SHA-256 and is a full cache (admission, per-entry expiry, housekeeping on
//! reads); together they cost several times what the rest of the answer does. This table answers those
//! repeats with a keyed hash of the token's last bytes (its signature) to pick a slot and a comparison of
//! the whole token: a hit needs the very bytes of a token that verified, so it can be no weaker than the
//! cache behind it. A collision or a stranger only costs a miss, which goes to the cache as before.
//!
//! Each entry also keeps the last answer rendered for its token ([`AnswerMemo`]): the answer states the
//! seconds left (`expiresIn`), so it can be reused for the rest of that second. The HTTP layer renders it;
//! this module only holds its bytes, for at most `SLOTS` (64) tokens.
//!
//! It never outlives what it mirrors: a hit is re-checked against the token's `exp` at the time of the
//! request, and [`Recent::invalidate`] (called when a key set withdraws a key, after the cache itself has
//! been emptied) turns every entry stale at once by moving the generation on. An entry is stamped with
//! the generation read *before* the cache lookup that produced it, so a result read just before an
//! invalidation can never be filed as current after it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::verify::Verified;

/// Slots (a power of two): a few peers' tokens, with room for collisions. Each holds at most one token
/// (at most `verify::MAX_TOKEN_BYTES`), so the table holds at most 64 of them.
const SLOTS: usize = 64;
/// Bytes at the end of a token that pick its slot: the end of the signature, which differs between any
/// two tokens, where the start (the header) is the same for every token of an issuer.
const HASHED_TAIL: usize = 32;

/// One remembered token.
struct Entry {
    token: Box<[u8]>,
    verified: Arc<Verified>,
    answer: Arc<AnswerMemo>,
    generation: u64,
}

/// A hit: the result, and the memo of its last answer.
pub struct Hit {
    pub verified: Arc<Verified>,
    pub answer: Arc<AnswerMemo>,
}

/// An answer's bytes as the HTTP layer rendered them, for the `expiresIn` they state.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub expires_in: u64,
    pub body: Bytes,
    /// The values of the identity headers.
    pub entity: Bytes,
    pub role: Bytes,
}

/// The last answer rendered for a remembered token.
#[derive(Debug, Default)]
pub struct AnswerMemo(Mutex<Option<Rendered>>);

impl AnswerMemo {
    /// The answer rendered for this `expiresIn`, if it is the last one rendered.
    pub fn get(&self, expires_in: u64) -> Option<Rendered> {
        let guard = self.0.lock().ok()?;
        guard
            .as_ref()
            .filter(|r| r.expires_in == expires_in)
            .cloned()
    }

    pub fn set(&self, rendered: Rendered) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = Some(rendered);
        }
    }
}

/// The table. Shared by every connection; a slot is read under a read lock, so concurrent hits on the
/// same token never wait for each other.
pub struct Recent {
    slots: Box<[RwLock<Option<Entry>>]>,
    hasher: std::hash::RandomState,
    generation: AtomicU64,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| RwLock::new(None)).collect(),
            hasher: std::hash::RandomState::new(),
            generation: AtomicU64::new(0),
        }
    }
}

impl Recent {
    /// The generation to stamp a result with: read it before looking the result up elsewhere.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The result for exactly these token bytes, if it is current and the token has not expired at `now`.
    pub fn get(&self, token: &[u8], now: SystemTime) -> Option<Hit> {
        let slot = self.slots.get(self.index(token))?;
        let guard = slot.read().ok()?;
        let entry = guard.as_ref()?;
        if entry.generation != self.generation() || !same_bytes(&entry.token, token) {
            return None;
        }
        (now < entry.verified.expires_at).then(|| Hit {
            verified: Arc::clone(&entry.verified),
            answer: Arc::clone(&entry.answer),
        })
    }

    /// Remembers `verified` for these token bytes, stamped with `generation` (see [`Recent::generation`]),
    /// with an empty answer memo, which it returns. Replaces whatever shared the slot.
    pub fn insert(
        &self,
        token: &[u8],
        verified: Arc<Verified>,
        generation: u64,
    ) -> Arc<AnswerMemo> {
        let answer = Arc::new(AnswerMemo::default());
        // A poisoned slot (a panic while it was written) is simply left alone: it only ever misses.
        if let Some(Ok(mut guard)) = self.slots.get(self.index(token)).map(|slot| slot.write()) {
            *guard = Some(Entry {
                token: token.into(),
                verified,
                answer: Arc::clone(&answer),
                generation,
            });
        }
        answer
    }

    /// Makes every entry stale (a key was withdrawn). Call it after the cache behind has been emptied.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn index(&self, token: &[u8]) -> usize {
        let tail = &token[token.len().saturating_sub(HASHED_TAIL)..];
        let mut hasher = self.hasher.build_hasher();
        hasher.write(tail);
        hasher.write_usize(token.len());
        // SLOTS is a power of two: the low bits of a keyed hash pick the slot.
        (hasher.finish() as usize) & (SLOTS - 1)
    }
}

/// Whether two byte strings are equal, looking at every byte whatever the first difference: the table
/// holds other peers' tokens, and how fast it answers a guess must not tell how much of it was right
/// (`==` stops at the first differing byte). An OR of XORs, which the compiler turns into a few vector
/// instructions per 32 bytes and never into an early exit.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::EntityId;
    use std::time::Duration;

    fn verified(expires_in: Duration) -> Arc<Verified> {
        Arc::new(Verified {
            entity_id: EntityId::parse("AA-1").unwrap(),
            roles: vec!["AA".into()],
            issuer: "https://issuer.example/realms/x".into(),
            expires_at: SystemTime::now() + expires_in,
            expires_at_text: String::new(),
            kid: "k".into(),
            claims_json: "{}".into(),
        })
    }

    #[test]
    fn a_hit_needs_the_same_bytes_a_current_generation_and_an_unexpired_token() {
        let recent = Recent::default();
        let now = SystemTime::now();
        let token = b"header.payload.signature-of-the-first-token".to_vec();
        assert!(recent.get(&token, now).is_none());
        recent.insert(
            &token,
            verified(Duration::from_secs(60)),
            recent.generation(),
        );
        assert!(recent.get(&token, now).is_some());
        // The memo is the entry's, and keeps one answer, by its `expiresIn`.
        let memo = recent.get(&token, now).unwrap().answer;
        let rendered = |expires_in| Rendered {
            expires_in,
            body: Bytes::from_static(b"{}"),
            entity: Bytes::from_static(b"AA-1"),
            role: Bytes::from_static(b"AA"),
        };
        memo.set(rendered(59));
        assert!(recent.get(&token, now).unwrap().answer.get(59).is_some());
        assert!(memo.get(58).is_none());
        // The same slot's hash but other bytes: a token differing before its hashed tail.
        let mut other = token.clone();
        other[0] ^= 1;
        assert!(recent.get(&other, now).is_none());
        // Longer or shorter by a byte.
        assert!(recent.get(&token[1..], now).is_none());
        // Expired by the time of the request.
        assert!(recent.get(&token, now + Duration::from_secs(61)).is_none());
        // Stale after an invalidation, and an entry stamped before it is filed stale too.
        let before = recent.generation();
        recent.invalidate();
        assert!(recent.get(&token, now).is_none());
        recent.insert(&token, verified(Duration::from_secs(60)), before);
        assert!(recent.get(&token, now).is_none());
        recent.insert(
            &token,
            verified(Duration::from_secs(60)),
            recent.generation(),
        );
        assert!(recent.get(&token, now).is_some());
    }

    #[test]
    fn same_bytes_is_equality() {
        let token: Vec<u8> = (0..1500).map(|i| (i * 7) as u8).collect();
        assert!(same_bytes(&token, &token.clone()));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(&token, &token[..1499]));
        for at in [0, 1, 31, 32, 700, 1499] {
            let mut other = token.clone();
            other[at] ^= 0x80;
            assert!(!same_bytes(&token, &other), "{at}");
        }
    }

    #[test]
    fn tokens_spread_over_the_slots_and_a_slot_holds_the_last_one() {
        let recent = Recent::default();
        let now = SystemTime::now();
        let tokens: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("h.p.signature-{i:04}").into_bytes())
            .collect();
        for token in &tokens {
            recent.insert(
                token,
                verified(Duration::from_secs(60)),
                recent.generation(),
            );
        }
        let hits = tokens
            .iter()
            .filter(|t| recent.get(t, now).is_some())
            .count();
        // At most one per slot, and most slots are used.
        assert!(hits <= SLOTS && hits > SLOTS / 2, "{hits}");
        assert!(recent.get(&tokens[199], now).is_some());
        assert!(recent.get(b"", now).is_none());
    }
}
