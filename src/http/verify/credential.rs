//! Where a token comes from on a request: `Authorization: Bearer`, or one of ReBIT's API-key headers
//! (`client_api_key`, `fip_api_key`, `aa_api_key`, each naming the role of the party that sends it),
//! read as `/v1/verify` and `/v1/authorize` both read it: a ReBIT header is the credential when there is
//! one, each header at most once, visible ASCII only.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use super::API_KEY_HEADERS;
use crate::inbound::{Rejection, Role};

/// Which header a token came from. A ReBIT header names the role of the party that sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Authorization,
    ClientApiKey,
    FipApiKey,
    AaApiKey,
}

impl Source {
    /// The role the header binds the token to: `fip_api_key` ⇒ FIP, `aa_api_key` ⇒ AA; the others bind
    /// none (`client_api_key` is whoever the endpoint accepts).
    pub fn bound_role(self) -> Option<Role> {
        match self {
            Source::FipApiKey => Some(Role::Fip),
            Source::AaApiKey => Some(Role::Aa),
            Source::Authorization | Source::ClientApiKey => None,
        }
    }
}

/// A request's credential: the token and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: Source,
}

/// The credential of a request. The ReBIT headers (`client_api_key`, `fip_api_key`, `aa_api_key`, each
/// with or without a `Bearer ` prefix, as Sahamati's own scripts send them) are the credential whenever one
/// is present, and `Authorization` is then ignored (it may be a gateway's own token); several ReBIT headers
/// must carry the same token, else the request is ambiguous. `Authorization: Bearer` is used only when no
/// ReBIT header is present. `Ok(None)` when there is no credential. A header given twice, or a value that is
/// not visible ASCII, is malformed.
pub fn credential_from_headers(headers: &HeaderMap) -> Result<Option<Credential<'_>>, Rejection> {
    let mut found: Option<Credential<'_>> = None;
    for (name, source) in API_KEY_HEADERS.iter().zip(API_KEY_SOURCES) {
        let Some(value) = single(headers, name)? else {
            continue;
        };
        let text = visible_ascii(value).ok_or(Rejection::Malformed)?.trim();
        let token = strip_bearer(text);
        found = match found {
            None => Some(Credential { token, source }),
            Some(held) if held.token != token => return Err(Rejection::AmbiguousCredentials),
            // The same token twice: the header that binds a role wins; two that bind different ones
            // contradict each other.
            Some(held) => match (held.source.bound_role(), source.bound_role()) {
                (Some(a), Some(b)) if a != b => return Err(Rejection::AmbiguousCredentials),
                (None, Some(_)) => Some(Credential { token, source }),
                _ => Some(held),
            },
        };
    }
    if found.is_some() {
        return Ok(found);
    }
    if let Some(value) = single(headers, &header::AUTHORIZATION)? {
        // Another scheme (Basic, say) is not ours to judge.
        if let Some(token) = bearer(value)? {
            return Ok(Some(Credential {
                token,
                source: Source::Authorization,
            }));
        }
    }
    Ok(None)
}

/// The credential as the hot path reads it: only the plain cases — one ReBIT header, or else
/// `Authorization: Bearer` — each header at most once, as bytes; `None` for anything else, which the
/// router then reads with [`credential_from_headers`] (and says what is wrong with it).
///
/// It skips the visible-ASCII check and the UTF-8 conversion [`credential_from_headers`] makes over every
/// byte of the token, and the four lookups by name: the hot path only uses the bytes to find a token
/// verified before. The only bytes dropped around them are spaces, tabs and the `Bearer` scheme, so a
/// value whose bytes find a verified token is visible ASCII and reads the same both ways; any other value
/// finds none, and goes to the router.
pub(super) fn plain_credential(headers: &HeaderMap) -> Option<(&[u8], Source)> {
    let mut api_key: Option<(&HeaderValue, Source)> = None;
    let mut authorization = None;
    for (name, value) in headers {
        if let Some(index) = API_KEY_HEADERS.iter().position(|known| known == name) {
            // Two ReBIT headers (the same token twice, or two) are for the router to judge.
            let source = *API_KEY_SOURCES.get(index)?;
            if api_key.replace((value, source)).is_some() {
                return None;
            }
        } else if name == header::AUTHORIZATION && authorization.replace(value).is_some() {
            return None;
        }
    }
    match (api_key, authorization) {
        (Some((value, source)), _) => {
            let text = value.as_bytes().trim_ascii();
            let token = match text.iter().position(|b| *b == b' ') {
                Some(space) if text[..space].eq_ignore_ascii_case(b"bearer") => {
                    text[space + 1..].trim_ascii()
                }
                _ => text,
            };
            Some((token, source))
        }
        (None, Some(value)) => {
            let bytes = value.as_bytes();
            let scheme_len = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
            if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            Some((bytes[scheme_len..].trim_ascii(), Source::Authorization))
        }
        (None, None) => None,
    }
}

/// The token of a request, wherever it came from ([`credential_from_headers`]).
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    credential_from_headers(headers).map(|c| c.map(|c| c.token))
}

/// The sources of [`API_KEY_HEADERS`], in the same order.
pub(super) const API_KEY_SOURCES: [Source; 3] =
    [Source::ClientApiKey, Source::FipApiKey, Source::AaApiKey];

/// `Bearer <token>` (scheme in any case) → the token; anything else as it is.
fn strip_bearer(text: &str) -> &str {
    match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => text,
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, Rejection> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => Ok(Some(value)),
        (Some(_), Some(_)) => Err(Rejection::Malformed),
    }
}

/// The value as text when it is visible ASCII or tab, as [`HeaderValue::to_str`] has it. That one stops at
/// the first byte it refuses, which keeps it from being vectorised; this one looks at every byte of a
/// 1–2 KiB token in a few instructions per 32 bytes, and nearly every value passes anyway.
fn visible_ascii(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    let visible = bytes
        .iter()
        .fold(true, |ok, &b| ok & ((32..127).contains(&b) | (b == b'\t')));
    // ASCII is UTF-8: this only converts, and checks ASCII a word at a time.
    visible.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// `Bearer <token>` (scheme in any case, RFC 7235) → the token; another scheme → `None`.
fn bearer(value: &HeaderValue) -> Result<Option<&str>, Rejection> {
    let bytes = value.as_bytes();
    let scheme_len = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_len].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let text = visible_ascii(value).ok_or(Rejection::Malformed)?;
    Ok(Some(text[scheme_len..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    /// Whatever [`plain_credential`] finds, [`credential_from_headers`] finds the same; where that one
    /// refuses or finds nothing, the plain reading is absent or holds a byte no token has.
    #[test]
    fn the_plain_credential_is_the_credential_or_cannot_match_a_token() {
        let names = [
            "client_api_key",
            "fip_api_key",
            "aa_api_key",
            "authorization",
            "x-other",
        ];
        let pieces: [&[u8]; 12] = [
            b"Bearer ",
            b"bearer ",
            b"BEARER\t",
            b"Basic ",
            b" ",
            b"\t",
            b"eyJ.a.b",
            b"tok",
            b"\xc2\xa0",
            b"\xc2\x85",
            b"\xff",
            b"=",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let visible = |bytes: &[u8]| bytes.iter().all(|b| (33..127).contains(b));
        let (mut found, mut agreed) = (0, 0);
        for _ in 0..20_000 {
            let mut pairs: Vec<(&str, Vec<u8>)> = Vec::new();
            for _ in 0..rng.usize(1..4) {
                let value: Vec<u8> = (0..rng.usize(0..5))
                    .flat_map(|_| pieces[rng.usize(..pieces.len())].to_vec())
                    .collect();
                pairs.push((names[rng.usize(..names.len())], value));
            }
            let refs: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (*n, &v[..])).collect();
            let map = headers(&refs);
            let Some((token, source)) = plain_credential(&map) else {
                continue;
            };
            found += 1;
            match credential_from_headers(&map) {
                Ok(Some(full)) if full.token.as_bytes() == token => {
                    assert_eq!(full.source, source, "{pairs:?}");
                    agreed += 1;
                }
                other => assert!(
                    token.is_empty() || !visible(token),
                    "{pairs:?}: plain {:?}, full {other:?}",
                    String::from_utf8_lossy(token)
                ),
            }
        }
        assert!(found > 1000 && agreed > 1000, "{found} {agreed}");
    }

    #[test]
    fn visible_ascii_refuses_what_to_str_refuses() {
        // Every byte a header value may hold, alone and inside a token-sized value, at either end.
        let mut refused = 0;
        for b in 0u8..=255 {
            let long = [vec![b'a'; 1000], vec![b], vec![b'z'; 33]].concat();
            for bytes in [vec![b], long.clone(), long[1000..].to_vec()] {
                // Bytes hyper would not have taken into a value at all are skipped.
                let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                    continue;
                };
                assert_eq!(visible_ascii(&value), value.to_str().ok(), "{b}");
                refused += usize::from(visible_ascii(&value).is_none());
            }
        }
        // The bytes from 128 up, in each of the three places.
        assert_eq!(refused, 128 * 3);
    }

    #[test]
    fn a_rebit_header_is_the_credential_and_authorization_only_a_fallback() {
        let t = |pairs: &[(&str, &[u8])]| {
            credential_from_headers(&headers(pairs))
                .map(|c| c.map(|c| (c.token.to_string(), c.source)))
        };
        assert_eq!(t(&[]), Ok(None));
        assert_eq!(
            t(&[("authorization", b"Bearer abc")]),
            Ok(Some(("abc".into(), Source::Authorization)))
        );
        assert_eq!(
            t(&[("authorization", b"bearer   abc ")]),
            Ok(Some(("abc".into(), Source::Authorization)))
        );
        assert_eq!(
            t(&[("authorization", b"Bearer")]),
            Ok(Some((String::new(), Source::Authorization)))
        );
        assert_eq!(t(&[("authorization", b"Basic Zm9vOmJhcg==")]), Ok(None));
        assert_eq!(
            t(&[("authorization", b"Basic x"), ("aa_api_key", b"tok")]),
            Ok(Some(("tok".into(), Source::AaApiKey)))
        );
        // A gateway's own token in Authorization does not hide the ReBIT credential.
        assert_eq!(
            t(&[("aa_api_key", b"a"), ("authorization", b"Bearer gateway")]),
            Ok(Some(("a".into(), Source::AaApiKey)))
        );
        // Sahamati's scripts send `client_api_key: Bearer <jwt>`.
        assert_eq!(
            t(&[("client_api_key", b"Bearer jwt")]),
            Ok(Some(("jwt".into(), Source::ClientApiKey)))
        );
        assert_eq!(
            t(&[("fip_api_key", b"BEARER  jwt ")]),
            Ok(Some(("jwt".into(), Source::FipApiKey)))
        );
        // Two ReBIT headers: the same token is fine (the one that binds a role wins), different are not.
        assert_eq!(
            t(&[("client_api_key", b"x"), ("aa_api_key", b"Bearer x")]),
            Ok(Some(("x".into(), Source::AaApiKey)))
        );
        assert_eq!(
            t(&[("aa_api_key", b"a"), ("fip_api_key", b"f")]),
            Err(Rejection::AmbiguousCredentials)
        );
        assert_eq!(
            t(&[("aa_api_key", b"x"), ("fip_api_key", b"x")]),
            Err(Rejection::AmbiguousCredentials)
        );
        assert_eq!(
            t(&[("fip_api_key", b"")]),
            Ok(Some((String::new(), Source::FipApiKey)))
        );
        assert_eq!(
            t(&[("client_api_key", b"a"), ("client_api_key", b"b")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            t(&[("client_api_key", b"\xff\xfe")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            t(&[("authorization", b"Bearer \xff")]),
            Err(Rejection::Malformed)
        );
        assert_eq!(t(&[("authorization", b"\xff\xfe")]), Ok(None));
    }
}
