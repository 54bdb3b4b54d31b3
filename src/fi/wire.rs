//! The JSON of the FI routes, in and out, worked inside the request's own buffer.
//!
//! Each operation takes the request body as a `Vec` and leaves the answer in it. Small fields
//! (`KeyMaterial`, the handle, nonces) are parsed into owned values; each large one (`encryptedData`,
//! `data`, `base64Data`) is located in the buffer ([`RawValue`] borrows it), decoded there, decrypted or
//! encrypted there, and base64 of the result is written back as the answer ([`super::inplace`]). So an
//! answer of a 16 MiB payload costs one buffer of about the body's size, which the body budget already
//! counts, and the answer can reuse the request's budget.
//!
//! Shapes:
//! - `/v1/fi/key-material`: `{"expiryHours"?}` → `{"KeyMaterial","keyHandle"}`;
//! - `/v1/fi/decrypt`: `{"keyHandle","KeyMaterial","encryptedData"}` → `{"data"}`, or with
//!   `"items":[{"KeyMaterial","encryptedData"}…]` → `{"items":[{"data"}|{"error","message"}…]}`;
//! - `/v1/fi/encrypt`: `{"KeyMaterial","data"}` → `{"encryptedData","KeyMaterial"}`;
//! - rahasya's `/ecc/v1/generateKey`, `/ecc/v1/encrypt` and `/ecc/v1/decrypt`, with `privateKey` /
//!   `ourPrivateKey` a key handle (or, to decrypt and encrypt, a real rahasya's PKCS#8 PEM).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::curve::PrivateKey;
use super::inplace::{Piece, decode_in_place, render_in_place};
use super::kek::{self, HandleSecret, KekFile, KekStatus};
use super::keys::{self, RemoteKey};
use super::{Code, Expired, FiError, NONCE_LEN, Session, TAG_LEN, fresh_nonce};
use crate::entity::EntityId;

/// Default and largest `expiryHours`.
pub const DEFAULT_EXPIRY_HOURS: u64 = 24;
pub const MAX_EXPIRY_HOURS: u64 = 168;
/// Most items in one batch decrypt.
pub const MAX_ITEMS: usize = 4096;

/// How each item of a batch ended (`None`: decrypted), for the metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub items: Vec<Option<Code>>,
}

/// The FI service: each entity's KEK.
#[derive(Debug, Default)]
pub struct Fi {
    keks: Vec<(EntityId, Arc<KekFile>)>,
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

impl Fi {
    pub fn new(keks: Vec<(EntityId, Arc<KekFile>)>) -> Self {
        Self { keks }
    }

    /// Whether any entity has a KEK (the routes answer `404 fi_disabled` otherwise).
    pub fn enabled(&self) -> bool {
        !self.keks.is_empty()
    }

    pub fn keks(&self) -> &[(EntityId, Arc<KekFile>)] {
        &self.keks
    }

    /// Each entity's KEK state, for `/readyz`.
    pub fn status(&self) -> Vec<(EntityId, KekStatus)> {
        self.keks
            .iter()
            .map(|(id, file)| (id.clone(), file.status()))
            .collect()
    }

    fn kek_for(&self, entity: Option<&str>) -> Result<&KekFile, FiError> {
        match (entity, self.keks.as_slice()) {
            (Some(id), keks) => keks
                .iter()
                .find(|(e, _)| e.as_str() == id)
                .map(|(_, f)| &**f)
                .ok_or_else(|| {
                    FiError::new(
                        Code::UnknownEntity,
                        "that entity has no FI key-encryption key",
                    )
                }),
            (None, [(_, only)]) => Ok(only),
            (None, _) => Err(FiError::new(
                Code::EntityRequired,
                "several entities have an FI key-encryption key; name one in the path",
            )),
        }
    }

    fn unseal(&self, handle: &str, now: SystemTime) -> Result<HandleSecret, FiError> {
        kek::unseal(self.keks.iter().map(|(_, f)| &**f), handle, now)
    }

    /// `POST /v1/fi/key-material`: a fresh key pair and nonce; the private half sealed in the handle.
    pub fn key_material(
        &self,
        entity: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, FiError> {
        #[derive(Deserialize)]
        struct In {
            #[serde(rename = "expiryHours")]
            expiry_hours: Option<u64>,
        }
        let kek = self.kek_for(entity)?;
        let body = body.trim_ascii();
        let requested = if body.is_empty() {
            None
        } else {
            serde_json::from_slice::<In>(body)
                .map_err(|_| {
                    FiError::bad_request(
                        "the body must be {\"expiryHours\": N} (1 to 168) or empty",
                    )
                })?
                .expiry_hours
        };
        let hours_wanted = requested.unwrap_or(DEFAULT_EXPIRY_HOURS);
        if !(1..=MAX_EXPIRY_HOURS).contains(&hours_wanted) {
            return Err(FiError::bad_request(
                "expiryHours must be between 1 and 168",
            ));
        }
        let secret = HandleSecret {
            key: PrivateKey::generate().map_err(|_| FiError::internal("no randomness"))?,
            nonce: Some(fresh_nonce()?),
            expiry: now + hours(hours_wanted),
        };
        let handle = kek.seal(&secret)?;
        let km = keys::key_material_json(
            &secret.key.public_key(),
            secret.expiry,
            secret.nonce.as_ref(),
            keys::PARAMS,
        );
        Ok(
            serde_json::to_vec(&serde_json::json!({ "KeyMaterial": km, "keyHandle": handle }))
                .unwrap_or_default(),
        )
    }

    /// rahasya's `GET /ecc/v1/generateKey`: `privateKey` is a handle (no nonce; callers make their own).
    pub fn generate_key(&self, entity: Option<&str>, now: SystemTime) -> Result<Vec<u8>, FiError> {
        let kek = self.kek_for(entity)?;
        let secret = HandleSecret {
            key: PrivateKey::generate().map_err(|_| FiError::internal("no randomness"))?,
            nonce: None,
            expiry: now + hours(DEFAULT_EXPIRY_HOURS),
        };
        let handle = kek.seal(&secret)?;
        let km = keys::key_material_json(&secret.key.public_key(), secret.expiry, None, "");
        Ok(serde_json::to_vec(&serde_json::json!({
            "privateKey": handle,
            "KeyMaterial": km,
            "errorInfo": null,
        }))
        .unwrap_or_default())
    }

    /// `POST /v1/fi/decrypt`, single or batch.
    pub fn decrypt(&self, buf: &mut Vec<u8>, now: SystemTime) -> Result<Report, FiError> {
        #[derive(Deserialize)]
        struct Item<'a> {
            #[serde(rename = "KeyMaterial", borrow)]
            key_material: Option<&'a RawValue>,
            #[serde(rename = "encryptedData", borrow)]
            encrypted_data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct In<'a> {
            #[serde(rename = "keyHandle")]
            key_handle: Option<String>,
            #[serde(rename = "KeyMaterial", borrow)]
            key_material: Option<&'a RawValue>,
            #[serde(rename = "encryptedData", borrow)]
            encrypted_data: Option<&'a RawValue>,
            #[serde(borrow)]
            items: Option<Vec<Item<'a>>>,
        }
        type Parsed = (Result<RemoteKey, FiError>, Result<Range<usize>, FiError>);
        let (handle, batch, parsed): (String, bool, Vec<Parsed>) = {
            let request: In = serde_json::from_slice(buf).map_err(|e| json_error(&e))?;
            let handle = request
                .key_handle
                .ok_or_else(|| FiError::bad_request("keyHandle is missing"))?;
            let item = |km: Option<&RawValue>, data: Option<&RawValue>| -> Parsed {
                (
                    km.ok_or_else(|| FiError::key_material("KeyMaterial is missing"))
                        .and_then(|km| keys::parse_key_material(km, now)),
                    data.ok_or_else(|| FiError::bad_request("encryptedData is missing"))
                        .and_then(|raw| string_span(buf, raw, "encryptedData")),
                )
            };
            match request.items {
                Some(items) => {
                    if request.key_material.is_some() || request.encrypted_data.is_some() {
                        return Err(FiError::bad_request(
                            "give either items or KeyMaterial and encryptedData, not both",
                        ));
                    }
                    if items.len() > MAX_ITEMS {
                        return Err(FiError::bad_request(format!(
                            "at most {MAX_ITEMS} items per request"
                        )));
                    }
                    let parsed = items
                        .iter()
                        .map(|i| item(i.key_material, i.encrypted_data))
                        .collect();
                    (handle, true, parsed)
                }
                None => {
                    let one = item(request.key_material, request.encrypted_data);
                    if let Err(e) = &one.1 {
                        return Err(e.clone());
                    }
                    (handle, false, vec![one])
                }
            }
        };
        let ours = self.unseal(&handle, now)?;
        let our_nonce = ours.nonce.ok_or_else(|| {
            FiError::invalid_handle(
                "this handle has no nonce (it was made by /ecc/v1/generateKey); use /ecc/v1/decrypt",
            )
        })?;
        let mut results = Vec::with_capacity(parsed.len());
        for (remote, span) in parsed {
            let result = remote.and_then(|remote| {
                let span = span?;
                let their_nonce = remote
                    .nonce
                    .ok_or_else(|| FiError::key_material("KeyMaterial.Nonce is missing"))?;
                open(buf, span, &ours.key, &remote, &our_nonce, &their_nonce)
            });
            results.push(result);
        }
        if !batch {
            let range = results
                .pop()
                .unwrap_or_else(|| Err(FiError::internal("no item")))?;
            let mut pieces = [
                Piece::Literal(b"{\"data\":\"".to_vec()),
                Piece::Base64(range),
                Piece::Literal(b"\"}".to_vec()),
            ];
            render_in_place(buf, &mut pieces);
            return Ok(Report::default());
        }
        let mut report = Report::default();
        let mut pieces = vec![Piece::Literal(b"{\"items\":[".to_vec())];
        for (index, result) in results.into_iter().enumerate() {
            let comma = if index == 0 { "" } else { "," };
            match result {
                Ok(range) => {
                    report.items.push(None);
                    pieces.push(Piece::Literal(format!("{comma}{{\"data\":\"").into_bytes()));
                    pieces.push(Piece::Base64(range));
                    pieces.push(Piece::Literal(b"\"}".to_vec()));
                }
                Err(e) => {
                    report.items.push(Some(e.kind));
                    let error = serde_json::json!({ "error": e.code(), "message": e.message });
                    pieces.push(Piece::Literal(format!("{comma}{error}").into_bytes()));
                }
            }
        }
        pieces.push(Piece::Literal(b"]}".to_vec()));
        render_in_place(buf, &mut pieces);
        Ok(report)
    }

    /// `POST /v1/fi/encrypt`: a fresh key and nonce of ours for the peer's `KeyMaterial`.
    pub fn encrypt(&self, buf: &mut Vec<u8>, now: SystemTime) -> Result<Report, FiError> {
        #[derive(Deserialize)]
        struct In<'a> {
            #[serde(rename = "KeyMaterial", borrow)]
            key_material: Option<&'a RawValue>,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let (remote, span) = {
            let request: In = serde_json::from_slice(buf).map_err(|e| json_error(&e))?;
            let km = request
                .key_material
                .ok_or_else(|| FiError::key_material("KeyMaterial is missing"))?;
            let data = request
                .data
                .ok_or_else(|| FiError::bad_request("data is missing"))?;
            (
                keys::parse_key_material(km, now)?,
                string_span(buf, data, "data")?,
            )
        };
        let their_nonce = remote
            .nonce
            .ok_or_else(|| FiError::key_material("KeyMaterial.Nonce is missing"))?;
        let ours = PrivateKey::generate().map_err(|_| FiError::internal("no randomness"))?;
        let our_nonce = fresh_nonce()?;
        let sealed = seal(buf, span, &ours, &remote, &our_nonce, &their_nonce)?;
        let km = keys::key_material_json(
            &ours.public_key(),
            now + hours(DEFAULT_EXPIRY_HOURS),
            Some(&our_nonce),
            keys::PARAMS,
        );
        let mut pieces = [
            Piece::Literal(b"{\"encryptedData\":\"".to_vec()),
            Piece::Base64(sealed),
            Piece::Literal(format!("\",\"KeyMaterial\":{km}}}").into_bytes()),
        ];
        render_in_place(buf, &mut pieces);
        Ok(Report::default())
    }

    /// rahasya's `POST /ecc/v1/decrypt` (`encrypt: false`) and `POST /ecc/v1/encrypt` (`encrypt: true`).
    pub fn rahasya(
        &self,
        buf: &mut Vec<u8>,
        encrypt: bool,
        now: SystemTime,
    ) -> Result<Report, FiError> {
        #[derive(Deserialize)]
        struct In<'a> {
            #[serde(rename = "remoteKeyMaterial", borrow)]
            remote_key_material: Option<&'a RawValue>,
            #[serde(rename = "ourPrivateKey")]
            our_private_key: Option<String>,
            #[serde(rename = "base64YourNonce")]
            your_nonce: Option<String>,
            #[serde(rename = "base64RemoteNonce")]
            remote_nonce: Option<String>,
            #[serde(rename = "base64Data", borrow)]
            base64_data: Option<&'a RawValue>,
            /// rahasya's encrypt names its input `data`.
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let (remote, private, our_nonce, their_nonce, span) = {
            let request: In = serde_json::from_slice(buf).map_err(|e| json_error(&e))?;
            let private = request
                .our_private_key
                .ok_or_else(|| FiError::bad_request("ourPrivateKey is missing"))?;
            let nonce = |value: Option<String>, name: &str| {
                value
                    .ok_or_else(|| FiError::bad_request(format!("{name} is missing")))
                    .and_then(|v| {
                        keys::parse_nonce(&v).map_err(|_| {
                            FiError::bad_request(format!("{name} is not base64 of 32 bytes"))
                        })
                    })
            };
            let our_nonce = nonce(request.your_nonce, "base64YourNonce")?;
            let their_nonce = nonce(request.remote_nonce, "base64RemoteNonce")?;
            let (data, name) = match (request.base64_data, request.data) {
                (Some(data), _) => (data, "base64Data"),
                (None, Some(data)) if encrypt => (data, "data"),
                _ => return Err(FiError::bad_request("base64Data is missing")),
            };
            let km = request
                .remote_key_material
                .ok_or_else(|| FiError::key_material("remoteKeyMaterial is missing"))?;
            (
                keys::parse_key_material(km, now)?,
                private,
                our_nonce,
                their_nonce,
                string_span(buf, data, name)?,
            )
        };
        let ours = if kek::is_handle(&private) {
            self.unseal(&private, now)?.key
        } else {
            keys::parse_pkcs8(&private)?
        };
        let range = if encrypt {
            seal(buf, span, &ours, &remote, &our_nonce, &their_nonce)?
        } else {
            open(buf, span, &ours, &remote, &our_nonce, &their_nonce)?
        };
        let mut pieces = [
            Piece::Literal(b"{\"base64Data\":\"".to_vec()),
            Piece::Base64(range),
            Piece::Literal(b"\",\"errorInfo\":null}".to_vec()),
        ];
        render_in_place(buf, &mut pieces);
        Ok(Report::default())
    }
}

fn json_error(error: &serde_json::Error) -> FiError {
    // serde's message names the field and position; it never quotes a value it did not expect.
    FiError::bad_request(format!("the body is not the expected JSON: {error}"))
}

/// The bytes of a JSON string value inside `buf` (without its quotes), unescaped in place if it holds
/// escapes (some encoders write `\/`).
fn string_span(buf: &[u8], raw: &RawValue, name: &str) -> Result<Range<usize>, FiError> {
    let text = raw.get();
    let not_string = || FiError::bad_request(format!("{name} must be a base64 string"));
    if text.len() < 2 || !text.starts_with('"') || !text.ends_with('"') {
        return Err(not_string());
    }
    let start = (text.as_ptr() as usize)
        .checked_sub(buf.as_ptr() as usize)
        .ok_or_else(not_string)?;
    let end = start + text.len();
    if end > buf.len() {
        return Err(not_string());
    }
    Ok(start + 1..end - 1)
}

/// Unescapes a JSON string's content in place if needed; returns the range of the plain text.
fn unescape(buf: &mut [u8], span: Range<usize>) -> Result<Range<usize>, FiError> {
    let Some(content) = buf.get(span.clone()) else {
        return Err(FiError::internal("span outside the body"));
    };
    if !content.contains(&b'\\') {
        return Ok(span);
    }
    // The quotes around the span are part of the body: parse the whole string, copy it back.
    let quoted = buf
        .get(span.start - 1..span.end + 1)
        .ok_or_else(|| FiError::internal("span outside the body"))?;
    let plain: String = serde_json::from_slice(quoted)
        .map_err(|_| FiError::bad_request("a string in the body is not valid JSON"))?;
    let plain = plain.as_bytes();
    // An escape is always longer than what it stands for, so the plain text fits.
    buf[span.start..span.start + plain.len()].copy_from_slice(plain);
    Ok(span.start..span.start + plain.len())
}

/// Decrypts the base64 `ciphertext ‖ tag` at `span` in place; the plaintext's range.
fn open(
    buf: &mut [u8],
    span: Range<usize>,
    ours: &PrivateKey,
    remote: &RemoteKey,
    our_nonce: &[u8; NONCE_LEN],
    their_nonce: &[u8; NONCE_LEN],
) -> Result<Range<usize>, FiError> {
    let span = unescape(buf, span)?;
    // Not base64, or shorter than a tag: it cannot have been made by an encryption with these keys.
    let bytes = decode_in_place(buf, span).map_err(|_| FiError::decryption_failed())?;
    if bytes.len() < TAG_LEN {
        return Err(FiError::decryption_failed());
    }
    let session = Session::new(ours, &remote.key, our_nonce, their_nonce)?;
    let n = session.open_in_place(&mut buf[bytes.clone()])?;
    Ok(bytes.start..bytes.start + n)
}

/// Encrypts the base64 data at `span`; `ciphertext ‖ tag` ends up at the front of the buffer.
fn seal(
    buf: &mut Vec<u8>,
    span: Range<usize>,
    ours: &PrivateKey,
    remote: &RemoteKey,
    our_nonce: &[u8; NONCE_LEN],
    their_nonce: &[u8; NONCE_LEN],
) -> Result<Range<usize>, FiError> {
    let span = unescape(buf, span)?;
    let bytes = decode_in_place(buf, span)
        .map_err(|_| FiError::bad_request("the data to encrypt is not base64"))?;
    let n = bytes.len();
    // Everything else in the body has been parsed: the data moves to the front, the tag after it.
    buf.copy_within(bytes, 0);
    if buf.len() < n + TAG_LEN {
        buf.resize(n + TAG_LEN, 0);
    }
    let session = Session::new(ours, &remote.key, our_nonce, their_nonce)?;
    let tag = session.seal_in_place(&mut buf[..n])?;
    buf[n..n + TAG_LEN].copy_from_slice(&tag);
    Ok(0..n + TAG_LEN)
}

/// Which key an error says expired, for the metrics.
pub fn expired(error: &FiError) -> Option<Expired> {
    match error.kind {
        Code::KeyExpired(which) => Some(which),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
