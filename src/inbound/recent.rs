//! The tokens verified most recently, by their bytes: a small table in front of the result cache.
//!
//! A forward-auth proxy presents the same few tokens on every call. The result cache ([`super::Verifier`])
//! is keyed by the token's SHA-256 and is a full cache (admission, per-entry expiry, housekeeping on
//! reads); together they cost several times what the rest of the answer does. This table answers those
//! repeats with a hash of the token's last bytes (its signature) to pick a slot and a comparison of the
//! whole token: a hit needs the very bytes of a token that verified, so it can be no weaker than the
//! cache behind it. A collision or a stranger only costs a miss, which goes to the cache as before.
//!
//! Every worker thread keeps its own view of the table ([`LOCAL_SLOTS`] entries), with the last answer
//! it rendered for each token: the answer states the seconds left (`expiresIn`), so it can be reused for
//! the rest of that second. A repeat is then answered with no write to memory another thread uses: on
//! two cores under load, the locks, reference counts and shared answer bytes of one table read by every
//! connection cost more than the rest of the answer (bench/README.md, "Where the time goes"). The HTTP
//! layer renders the answer; this module only holds its bytes.
//!
//! It never outlives what it mirrors: a hit, from either view, is re-checked against the time the result
//! cache would keep it (`exp` plus the leeway) at the time of the request, and [`Recent::invalidate`]
//! (called when a key set withdraws a key, after the cache itself has been emptied) turns every entry
//! stale at once by moving the generation on. An entry is stamped with the generation read *before* the
//! cache lookup that produced it, so a result read just before an invalidation can never be filed as
//! current after it.
//!
//! Memory: the shared table holds at most [`SLOTS`] entries, each one token (at most
//! `verify::MAX_TOKEN_BYTES`) and its result; each worker thread holds at most [`LOCAL_SLOTS`] more
//! entries (an entry replaced in the shared table lives on in a thread's view until that view replaces
//! it) and as many rendered answers.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;

use super::verify::Verified;

/// Slots of the shared table (a power of two): a few peers' tokens, with room for collisions.
pub const SLOTS: usize = 64;
/// Slots of each worker thread's view (a power of two, at most `SLOTS`): the hottest few tokens.
pub const LOCAL_SLOTS: usize = 16;
/// Bytes at the end of a token that pick its slot: the end of the signature, which differs between any
/// two tokens, where the start (the header) is the same for every token of an issuer.
const HASHED_TAIL: usize = 32;

/// One remembered token. Never changed once made: views share it.
struct Entry {
    token: Box<[u8]>,
    verified: Arc<Verified>,
    /// Until when the result cache would answer for it: `exp` plus the leeway.
    valid_until: SystemTime,
    generation: u64,
}

impl Entry {
    /// Whether this entry answers for `token` at `now`, in `generation`.
    fn answers(&self, token: &[u8], now: SystemTime, generation: u64) -> bool {
        self.generation == generation && now < self.valid_until && same_bytes(&self.token, token)
    }
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

/// An entry as one worker thread sees it, with the answer that thread last rendered for it.
struct LocalEntry {
    /// The [`Recent`] it came from: a process may hold several (tests do).
    table: u64,
    entry: Arc<Entry>,
    rendered: Option<Rendered>,
}

thread_local! {
    /// This thread's view. Worker threads are few and long-lived; a view dies with its thread.
    static VIEW: RefCell<[Option<LocalEntry>; LOCAL_SLOTS]> = const { RefCell::new([const { None }; LOCAL_SLOTS]) };
}

/// Tells tables apart in the views.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(0);

/// The table, shared by every connection.
pub struct Recent {
    slots: Box<[RwLock<Option<Arc<Entry>>>]>,
    /// Mixed into the slot hash, so which tokens share a slot differs from process to process.
    seed: u64,
    generation: AtomicU64,
    id: u64,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| RwLock::new(None)).collect(),
            seed: fastrand::u64(..),
            generation: AtomicU64::new(0),
            id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Recent {
    /// The generation to stamp a result with: read it before looking the result up elsewhere.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Calls `answer` with the result for exactly these token bytes and this thread's memo of the last
    /// answer rendered for them (`None` at first), if the table holds a current entry for them at `now`;
    /// `None` is a miss. `answer` is called at most once.
    pub fn with_hit<R>(
        &self,
        token: &[u8],
        now: SystemTime,
        mut answer: impl FnMut(&Arc<Verified>, &mut Option<Rendered>) -> R,
    ) -> Option<R> {
        let index = self.index(token);
        let generation = self.generation();
        let from_view = VIEW.try_with(|view| {
            // Taken only here, never across a call that could come back: a failure is a thread
            // shutting down, and the shared table still answers.
            let Ok(mut view) = view.try_borrow_mut() else {
                return Err(());
            };
            let Some(slot) = view.get_mut(index & (LOCAL_SLOTS - 1)) else {
                return Err(());
            };
            let seen = slot
                .as_ref()
                .is_some_and(|l| l.table == self.id && l.entry.answers(token, now, generation));
            if !seen {
                match self.shared(index) {
                    Some(entry) if entry.answers(token, now, generation) => {
                        *slot = Some(LocalEntry {
                            table: self.id,
                            entry,
                            rendered: None,
                        });
                    }
                    _ => return Ok(None),
                }
            }
            Ok(slot
                .as_mut()
                .map(|l| answer(&l.entry.verified, &mut l.rendered)))
        });
        match from_view {
            Ok(Ok(result)) => result,
            // No view on this thread: the shared table, with nothing memoized.
            _ => self
                .shared(index)
                .filter(|entry| entry.answers(token, now, generation))
                .map(|entry| answer(&entry.verified, &mut None)),
        }
    }

    /// Remembers `verified` for these token bytes until `valid_until`, stamped with `generation` (see
    /// [`Recent::generation`]). Replaces whatever shared the slot.
    pub fn insert(
        &self,
        token: &[u8],
        verified: Arc<Verified>,
        valid_until: SystemTime,
        generation: u64,
    ) {
        let entry = Arc::new(Entry {
            token: token.into(),
            verified,
            valid_until,
            generation,
        });
        // A poisoned slot (a panic while it was written) is simply left alone: it only ever misses.
        if let Some(Ok(mut guard)) = self.slots.get(self.index(token)).map(|slot| slot.write()) {
            *guard = Some(entry);
        }
    }

    /// Makes every entry stale (a key was withdrawn), in every view. Call it after the cache behind has
    /// been emptied.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The shared table's entry in slot `index`.
    fn shared(&self, index: usize) -> Option<Arc<Entry>> {
        let guard = self.slots.get(index)?.read().ok()?;
        guard.as_ref().map(Arc::clone)
    }

    /// The slot for `token`: a multiplicative hash of its tail and length. Only tokens that verified are
    /// ever stored, and a hit compares every byte, so the hash needs to spread tokens, not resist anyone:
    /// a collision costs a miss.
    fn index(&self, token: &[u8]) -> usize {
        const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
        let tail = &token[token.len().saturating_sub(HASHED_TAIL)..];
        let mut hash = self.seed ^ token.len() as u64;
        for chunk in tail.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            hash = (hash.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(MULTIPLIER);
        }
        // The top bits of a multiplicative hash are its best mixed.
        (hash >> (u64::BITS - SLOTS.trailing_zeros())) as usize
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

    fn verified() -> Arc<Verified> {
        Arc::new(Verified {
            entity_id: EntityId::parse("AA-1").unwrap(),
            roles: vec!["AA".into()],
            issuer: "https://issuer.example/realms/x".into(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
            expires_at_text: String::new(),
            kid: "k".into(),
            claims_json: "{}".into(),
        })
    }

    fn rendered(expires_in: u64) -> Rendered {
        Rendered {
            expires_in,
            body: Bytes::from_static(b"{}"),
            entity: Bytes::from_static(b"AA-1"),
            role: Bytes::from_static(b"AA"),
        }
    }

    /// Whether the table answers for `token` at `now`.
    fn hit(recent: &Recent, token: &[u8], now: SystemTime) -> bool {
        recent.with_hit(token, now, |_, _| ()).is_some()
    }

    /// The memo this thread holds for `token`.
    fn memo(recent: &Recent, token: &[u8], now: SystemTime) -> Option<u64> {
        recent
            .with_hit(token, now, |_, memo| memo.as_ref().map(|r| r.expires_in))
            .flatten()
    }

    #[test]
    fn a_hit_needs_the_same_bytes_a_current_generation_and_a_time_before_the_end() {
        let recent = Recent::default();
        let now = SystemTime::now();
        let until = now + Duration::from_secs(60);
        let token = b"header.payload.signature-of-the-first-token".to_vec();
        assert!(!hit(&recent, &token, now));
        recent.insert(&token, verified(), until, recent.generation());
        assert!(hit(&recent, &token, now));
        // The same slot's hash but other bytes: a token differing before its hashed tail.
        let mut other = token.clone();
        other[0] ^= 1;
        assert!(!hit(&recent, &other, now));
        // Longer or shorter by a byte.
        assert!(!hit(&recent, &token[1..], now));
        // At or past the end, though this thread's view holds it.
        assert!(!hit(&recent, &token, until));
        assert!(hit(&recent, &token, now));
        // Stale after an invalidation, in this thread's view too, and an entry stamped before it is
        // filed stale.
        let before = recent.generation();
        recent.invalidate();
        assert!(!hit(&recent, &token, now));
        recent.insert(&token, verified(), until, before);
        assert!(!hit(&recent, &token, now));
        recent.insert(&token, verified(), until, recent.generation());
        assert!(hit(&recent, &token, now));
    }

    #[test]
    fn each_thread_keeps_its_own_memo_of_the_last_answer() {
        let recent = Arc::new(Recent::default());
        let now = SystemTime::now();
        let token = b"h.p.a-token-with-a-memo".to_vec();
        recent.insert(
            &token,
            verified(),
            now + Duration::from_secs(60),
            recent.generation(),
        );
        assert_eq!(memo(&recent, &token, now), None);
        recent.with_hit(&token, now, |_, memo| *memo = Some(rendered(59)));
        assert_eq!(memo(&recent, &token, now), Some(59));
        // Another thread hits the same entry, with a memo of its own.
        let (shared, bytes) = (Arc::clone(&recent), token.clone());
        let elsewhere = std::thread::spawn(move || {
            let first = memo(&shared, &bytes, now);
            shared.with_hit(&bytes, now, |_, memo| *memo = Some(rendered(58)));
            (first, memo(&shared, &bytes, now))
        })
        .join()
        .unwrap();
        assert_eq!(elsewhere, (None, Some(58)));
        assert_eq!(memo(&recent, &token, now), Some(59));
        // A new entry for the token (verified again after an invalidation) starts with no memo.
        recent.invalidate();
        recent.insert(
            &token,
            verified(),
            now + Duration::from_secs(60),
            recent.generation(),
        );
        assert_eq!(memo(&recent, &token, now), None);
    }

    #[test]
    fn tables_do_not_answer_for_each_other() {
        let (one, two) = (Recent::default(), Recent::default());
        let now = SystemTime::now();
        let token = b"h.p.a-token-in-one-table".to_vec();
        one.insert(&token, verified(), now + Duration::from_secs(60), 0);
        assert!(hit(&one, &token, now));
        assert!(!hit(&two, &token, now));
        assert!(hit(&one, &token, now));
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
        let until = now + Duration::from_secs(60);
        let tokens: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("h.p.signature-{i:04}").into_bytes())
            .collect();
        for token in &tokens {
            recent.insert(token, verified(), until, recent.generation());
        }
        let used = (0..SLOTS).filter(|&i| recent.shared(i).is_some()).count();
        let hits = tokens.iter().filter(|t| hit(&recent, t, now)).count();
        // At most one per slot, and most slots are used.
        assert!(used > SLOTS * 3 / 4, "{used}");
        assert!(hits <= SLOTS && hits > SLOTS / 2, "{hits}");
        assert!(hit(&recent, &tokens[199], now));
        assert!(!hit(&recent, b"", now));
    }
}
