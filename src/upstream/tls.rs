//! The TLS configuration of the outbound HTTPS clients that trust the system roots (IAM, realm keys,
//! Central Registry, `certify`), built once and shared; [`super::http::ClientSpec`] applies it.
//!
//! Each `reqwest` client would otherwise build its own: the platform verifier copies every trust anchor
//! of the system store (about 100 KiB of heap on a Debian store) for each client, and a sidecar that is
//! meant to sit idle in every pod keeps three or more of them for its whole life. The configuration is
//! the one reqwest builds itself for our feature set — the installed provider (ring), every TLS version
//! it supports, the platform verifier, no client certificate, ALPN `http/1.1` — so the clients behave as
//! before; only the verifier (and its anchors) is shared.

use std::sync::{Arc, OnceLock};

/// `None` when the verifier could not be built: each client then builds its own, and reports the error
/// itself where it always did.
static SHARED: OnceLock<Option<rustls::ClientConfig>> = OnceLock::new();

fn build() -> Option<rustls::ClientConfig> {
    crate::install_crypto_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider)).ok()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(config)
}

/// `builder` with the shared TLS configuration (or as it is, if none could be built).
pub fn shared(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    match SHARED.get_or_init(build) {
        Some(config) => builder.tls_backend_preconfigured(config.clone()),
        None => builder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_configuration_is_what_reqwest_would_build_and_clients_take_it() {
        let config = SHARED
            .get_or_init(build)
            .clone()
            .expect("a TLS configuration");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config.enable_sni);
        assert!(!config.client_auth_cert_resolver.has_certs());
        assert!(shared(reqwest::Client::builder()).build().is_ok());
    }
}
