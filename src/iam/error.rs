//! What went wrong talking to the IAM, described without secrets.
//!
//! Every variant is built from values that are safe to log: HTTP status, the IAM's `errorCode`/`errorMsg`,
//! a transaction id, and for bodies that were not the IAM's envelope (a gateway's HTML page, an empty or
//! truncated body) a short excerpt passed through [`sanitize_excerpt`], which removes anything that could
//! be a token or a secret before the text is kept.

use std::fmt;
use std::time::Duration;

use super::Endpoint;

/// Most characters of a foreign body kept for diagnosis.
const EXCERPT_CHARS: usize = 160;
/// A run of token-like characters at least this long is treated as a credential and cut out.
const CREDENTIAL_RUN: usize = 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IamError {
    /// No HTTP answer: connection refused, DNS, TLS, or a timeout.
    #[error("IAM {} request failed: {detail}", .endpoint.as_str())]
    Transport {
        endpoint: Endpoint,
        detail: String,
        timed_out: bool,
    },
    /// An HTTP answer that is not a success.
    #[error("IAM {} answered HTTP {status}{}", .endpoint.as_str(), Described(.error_code, .error_msg, .excerpt))]
    Rejected {
        endpoint: Endpoint,
        status: u16,
        error_code: Option<String>,
        error_msg: Option<String>,
        txn_id: Option<String>,
        excerpt: Option<String>,
        retry_after: Option<Duration>,
    },
    /// A success status with a body we cannot use.
    #[error("IAM {} answered HTTP {status} with an unusable body: {reason}{}", .endpoint.as_str(), Described(&None, &None, .excerpt))]
    Malformed {
        endpoint: Endpoint,
        status: u16,
        reason: String,
        excerpt: Option<String>,
    },
}

impl IamError {
    /// The IAM said the credentials are wrong (or the secret expired past its grace period).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, IamError::Rejected { status: 401, .. })
    }

    /// A 401 from a secret endpoint that blames the admin's *user token* (`TKN_2001`, "Authorization
    /// token is missing or invalid"), as opposed to one that blames the entity ("Invalid entity id": the
    /// user does not administer it). Only the first is cured by logging in again.
    pub fn is_bad_user_token(&self) -> bool {
        match self {
            IamError::Rejected {
                status: 401,
                error_code,
                error_msg,
                ..
            } => {
                let code = error_code.as_deref().unwrap_or("");
                let msg = error_msg.as_deref().unwrap_or("").to_ascii_lowercase();
                code.eq_ignore_ascii_case("TKN_2001")
                    || msg.contains("token")
                    || (code.is_empty() && msg.is_empty())
            }
            _ => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IamError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable, low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IamError::Transport {
                timed_out: true, ..
            } => "timeout",
            IamError::Transport { .. } => "transport",
            IamError::Rejected { status: 401, .. } => "unauthorized",
            IamError::Rejected { status: 429, .. } => "throttled",
            IamError::Rejected {
                status: 400..=499, ..
            } => "http_4xx",
            IamError::Rejected { .. } => "http_5xx",
            IamError::Malformed { .. } => "malformed",
        }
    }
}

struct Described<'a>(&'a Option<String>, &'a Option<String>, &'a Option<String>);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Described(code, msg, excerpt) = self;
        if let Some(code) = code {
            write!(f, " {code}")?;
        }
        if let Some(msg) = msg {
            write!(f, ": {msg}")?;
        }
        if code.is_none()
            && msg.is_none()
            && let Some(excerpt) = excerpt
        {
            write!(f, " (body: {excerpt:?})")?;
        }
        Ok(())
    }
}

/// The forms a credential can take in an echoed request: as sent in a form body (`+` for spaces,
/// upper-case hex), as a URL would carry it (`%20`, lower-case hex) and inside a JSON string.
pub fn credential_forms(credential: &str) -> Vec<String> {
    if credential.is_empty() {
        return Vec::new();
    }
    let form = serde_urlencoded::to_string([("", credential)])
        .map(|s| s.trim_start_matches('=').to_string())
        .unwrap_or_default();
    let url = form.replace('+', "%20");
    let json = serde_json::to_string(credential)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut forms = vec![
        credential.to_string(),
        lowercase_percent_escapes(&form),
        lowercase_percent_escapes(&url),
        form,
        url,
        json,
    ];
    forms.retain(|f| !f.is_empty());
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

fn lowercase_percent_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '%' {
            out.extend(chars.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// Makes a foreign body safe and short enough to keep in an error: control characters become spaces,
/// whitespace collapses, every run of `CREDENTIAL_RUN` (20) or more token-like characters (JWTs, secrets,
/// base64) is replaced by `[redacted]`, any of `known_secrets` is removed wherever it appears, and the
/// result is cut to `EXCERPT_CHARS` (160) characters. Returns `None` for an empty body.
pub fn sanitize_excerpt<S: AsRef<str>>(body: &[u8], known_secrets: &[S]) -> Option<String> {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in known_secrets
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| !s.is_empty())
    {
        text = text.replace(secret, "[redacted]");
    }
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= CREDENTIAL_RUN {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    let mut last_space = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '=' | '~') {
            run.push(c);
            last_space = false;
            continue;
        }
        flush(&mut run, &mut out);
        if c.is_whitespace() || c.is_control() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        if out.chars().count() > EXCERPT_CHARS * 4 {
            break;
        }
    }
    flush(&mut run, &mut out);
    let trimmed = out.trim();
    if trimmed.is_empty() {
        return None;
    }
    let mut excerpt: String = trimmed.chars().take(EXCERPT_CHARS).collect();
    if trimmed.chars().count() > EXCERPT_CHARS {
        excerpt.push('…');
    }
    Some(excerpt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_lose_tokens_and_known_secrets() {
        let body = br#"{"accessToken":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl","secret":"shortone"}"#;
        let excerpt = sanitize_excerpt(body, &["shortone"]).unwrap();
        assert!(!excerpt.contains("eyJ"), "{excerpt}");
        assert!(!excerpt.contains("shortone"), "{excerpt}");
        assert!(excerpt.contains("accessToken"));
    }

    #[test]
    fn excerpts_lose_a_secret_echoed_url_encoded_or_json_escaped() {
        let secret = "s3cr3t +/=&\"ö";
        let forms = credential_forms(secret);
        let echoes = [
            format!("id=FIU&secret={}", forms[1]),
            "bad form: id=FIU&secret=s3cr3t%20%2b%2f%3d%26%22%c3%b6".to_string(),
            "bad form: secret=s3cr3t%20%2B%2F%3D%26%22%C3%B6".to_string(),
            format!("{{\"secret\":{}}}", serde_json::to_string(secret).unwrap()),
        ];
        for echo in echoes {
            let excerpt = sanitize_excerpt(echo.as_bytes(), &forms).unwrap();
            assert!(!excerpt.contains("s3cr3t"), "{echo} -> {excerpt}");
            assert!(excerpt.contains("[redacted]"), "{excerpt}");
        }
    }

    #[test]
    fn the_two_kinds_of_secret_endpoint_401_are_told_apart() {
        let rejected = |code: &str, msg: &str| IamError::Rejected {
            endpoint: Endpoint::SecretRead,
            status: 401,
            error_code: Some(code.into()),
            error_msg: Some(msg.into()),
            txn_id: None,
            excerpt: None,
            retry_after: None,
        };
        assert!(
            rejected("TKN_2001", "Authorization token is missing or invalid").is_bad_user_token()
        );
        assert!(
            rejected("Unauthorized", "Authorization token is missing or invalid")
                .is_bad_user_token()
        );
        assert!(!rejected("Unauthorized", "Invalid entity id").is_bad_user_token());
    }

    #[test]
    fn excerpts_of_html_are_short_and_single_line() {
        let page = format!(
            "<html>\n<body>\n<h1>502 Bad Gateway</h1>{}</body></html>",
            "x ".repeat(500)
        );
        let excerpt = sanitize_excerpt::<&str>(page.as_bytes(), &[]).unwrap();
        assert!(excerpt.starts_with("<html> <body> <h1>502 Bad Gateway</h1>"));
        assert!(!excerpt.contains('\n'));
        assert!(excerpt.chars().count() <= EXCERPT_CHARS + 1);
        assert_eq!(sanitize_excerpt::<&str>(b"  \n ", &[]), None);
        assert_eq!(
            sanitize_excerpt::<&str>(&[0xff, 0xfe, b'a'], &[]).unwrap(),
            "��a"
        );
    }

    #[test]
    fn display_is_one_line_and_names_the_envelope() {
        let e = IamError::Rejected {
            endpoint: Endpoint::EntityToken,
            status: 401,
            error_code: Some("Unauthorized".into()),
            error_msg: Some("Invalid entity id/secret or secret is expired".into()),
            txn_id: None,
            excerpt: None,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "IAM entity_token answered HTTP 401 Unauthorized: Invalid entity id/secret or secret is expired"
        );
        assert!(e.is_unauthorized());
        assert_eq!(e.kind(), "unauthorized");
    }
}
