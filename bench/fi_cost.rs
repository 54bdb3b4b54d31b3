//! `bench-fi-cost [MIB]`: where the time and the memory of FI encryption go, in process, as one JSON object.
//!
//! - key material per second (a key pair, a nonce, the handle sealed under the KEK, the JSON);
//! - the cost split of one decrypt: ECDH (µs), HKDF (µs), AES-256-GCM, base64 decode and encode, and
//!   parsing the JSON around a payload (MiB/s each);
//! - `Fi::decrypt` end to end in process (no HTTP) for 1 KiB, 1 MiB and MIB MiB (default 16): milliseconds,
//!   and the most heap it allocated beyond the request body it was given (a counting allocator), against
//!   the ciphertext's size: the memory per request.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aa_token_broker::entity::EntityId;
use aa_token_broker::fi::curve::PrivateKey;
use aa_token_broker::fi::inplace::{Piece, decode_in_place, render_in_place};
use aa_token_broker::fi::kek::KekFile;
use aa_token_broker::fi::wire::Fi;
use aa_token_broker::fi::{Session, fresh_nonce, keys};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Calls per second of `f` over at least `at_least`.
fn rate(at_least: Duration, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < at_least {
        f();
        calls += 1;
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

const MIB: usize = 1024 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(16);
    let window = Duration::from_millis(if mib <= 2 { 300 } else { 1500 });
    let dir = tempfile::tempdir()?;
    let kek_path = dir.path().join("kek");
    std::fs::write(&kek_path, [7u8; 32])?;
    let kek = std::sync::Arc::new(KekFile::open(&kek_path)?);
    let fi = Fi::new(vec![(EntityId::parse("FIU-BENCH")?, kek)]);
    let now = SystemTime::now();

    let key_material_per_sec = rate(window, || {
        std::hint::black_box(fi.key_material(None, b"", now).ok());
    });
    let (a, b) = (
        PrivateKey::generate().map_err(|_| "no randomness")?,
        PrivateKey::generate().map_err(|_| "no randomness")?,
    );
    let b_public = b.public_key();
    let ecdh_per_sec = rate(window, || {
        std::hint::black_box(a.agree(&b_public));
    });
    let shared = a.agree(&b_public);
    let (n1, n2) = (fresh_nonce()?, fresh_nonce()?);
    let hkdf_per_sec = rate(window, || {
        std::hint::black_box(Session::from_shared(&shared, &n1, &n2).ok());
    });
    let session = Session::from_shared(&shared, &n1, &n2)?;
    let mut big = vec![0x5au8; mib * MIB];
    let aes_per_sec = rate(window, || {
        std::hint::black_box(session.seal_in_place(&mut big).ok());
    });
    let text = STANDARD.encode(&big);
    let mut scratch = text.clone().into_bytes();
    let decode_per_sec = rate(window, || {
        scratch.copy_from_slice(text.as_bytes());
        std::hint::black_box(decode_in_place(&mut scratch, 0..text.len()).ok());
    });
    let copy_per_sec = rate(window, || {
        scratch.copy_from_slice(text.as_bytes());
    });
    let mut out = Vec::with_capacity(text.len() + 64);
    let encode_per_sec = rate(window, || {
        out.clear();
        out.extend_from_slice(&big);
        let mut pieces = [Piece::Base64(0..big.len())];
        render_in_place(&mut out, &mut pieces);
    });
    let json = format!("{{\"keyHandle\":\"x\",\"encryptedData\":\"{text}\"}}");
    let json_per_sec = rate(window, || {
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        std::hint::black_box(parsed);
    });
    let per_mib = |per_sec: f64| per_sec * mib as f64;
    // Copy out of the decode and encode figures the memcpy that refills the buffer each round.
    let copy_ms = 1e3 / copy_per_sec;

    // End to end in process, with the memory it takes beyond the body.
    let made: serde_json::Value = serde_json::from_slice(&fi.key_material(None, b"", now)?)?;
    let mut sizes = vec![1024usize, MIB];
    if mib > 1 {
        sizes.push(mib * MIB);
    }
    let mut decrypts = Vec::new();
    for size in sizes {
        let mut plain = vec![0x33u8; size];
        let fip = PrivateKey::generate().map_err(|_| "no randomness")?;
        let fip_nonce = fresh_nonce()?;
        let ours = keys::parse_public(
            made["KeyMaterial"]["DHPublicKey"]["KeyValue"]
                .as_str()
                .unwrap_or(""),
        )?;
        let our_nonce = keys::parse_nonce(made["KeyMaterial"]["Nonce"].as_str().unwrap_or(""))?;
        let tag = Session::new(&fip, &ours, &fip_nonce, &our_nonce)?.seal_in_place(&mut plain)?;
        plain.extend_from_slice(&tag);
        let km = keys::key_material_json(
            &fip.public_key(),
            now + Duration::from_secs(3600),
            Some(&fip_nonce),
            keys::PARAMS,
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "keyHandle": made["keyHandle"], "KeyMaterial": km, "encryptedData": STANDARD.encode(&plain),
        }))?;
        let ciphertext = plain.len();
        drop(plain);
        let rounds = if size >= 8 * MIB { 3 } else { 10 };
        let mut best = f64::MAX;
        let mut extra = 0usize;
        for _ in 0..rounds {
            let mut buf = body.clone();
            let base = LIVE.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let started = Instant::now();
            fi.decrypt(&mut buf, now)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
            extra = extra.max(PEAK.load(Ordering::Relaxed) - base);
        }
        decrypts.push(serde_json::json!({
            "plaintext_bytes": size,
            "ciphertext_bytes": ciphertext,
            "body_bytes": body.len(),
            "ms": best,
            "mib_per_sec": size as f64 / MIB as f64 / (best / 1e3),
            "extra_heap_bytes": extra,
            "held_per_ciphertext_byte": (body.len() + extra) as f64 / ciphertext as f64,
        }));
    }
    println!(
        "{}",
        serde_json::json!({
            "payload_mib": mib,
            "key_material_per_sec": key_material_per_sec,
            "ecdh_us": 1e6 / ecdh_per_sec,
            "hkdf_us": 1e6 / hkdf_per_sec,
            "aes_gcm_mib_per_sec": per_mib(aes_per_sec),
            "base64_decode_mib_per_sec": mib as f64 / ((1e3 / decode_per_sec - copy_ms) / 1e3),
            "base64_encode_mib_per_sec": mib as f64 / ((1e3 / encode_per_sec - copy_ms * 0.75) / 1e3),
            "json_parse_mib_per_sec": per_mib(json_per_sec) * 4.0 / 3.0,
            "decrypt_in_process": decrypts,
        })
    );
    Ok(())
}
