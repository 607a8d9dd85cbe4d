//! HTTPS for a node's listener: a certificate chain and its private key, from PEM, made into a rustls server
//! configuration. Owns only that conversion; the node hands the result to actix-web's rustls listener.
//!
//! The crypto provider (aws-lc-rs, which rustls already uses in this tree through ractor_cluster) is passed to the
//! configuration rather than installed as rustls's process default, so nothing global is touched.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key do not make a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no `CERTIFICATE` block, or a block that does not parse.
    #[error("no certificate in PEM: {0}")]
    Certificate(String),
    /// The key file holds no private key (PKCS#8, PKCS#1 or SEC1) that parses.
    #[error("no private key in PEM: {0}")]
    Key(String),
    /// rustls refused the pair (for example a key that does not match the certificate).
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// A server TLS configuration (HTTP/1.1), cheap to clone.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl TlsConfig {
    /// From a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(certificate_chain: &[u8], private_key: &[u8]) -> Result<TlsConfig, TlsError> {
        let chain = CertificateDer::pem_slice_iter(certificate_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate("no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key).map_err(|error| TlsError::Key(error.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::Config(error.to_string()))?;
        Ok(TlsConfig(Arc::new(config)))
    }

    /// The rustls configuration, for a listener.
    pub fn server_config(&self) -> rustls::ServerConfig {
        (*self.0).clone()
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.write_str("TlsConfig { .. }")
    }
}
