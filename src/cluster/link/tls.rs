//! TLS for links ([`LinkTls`]): mutual TLS with rustls, trusting the certificates of a configuration file (a
//! cluster CA, or the nodes' own self-signed certificates, pinned). Each node presents its certificate both when it
//! accepts a link and when it dials one; a node checks the peer's chain against the trusted certificates, and a
//! dialer also checks that the certificate names the peer (a DNS subject alternative name equal to the peer's node
//! name). The cluster secret is still checked inside, by ractor_cluster's challenge.
//!
//! The crypto provider (aws-lc-rs) is passed to the configurations, never installed as rustls's process default.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::LinkError;

/// A node's TLS for its links: the acceptor for links peers open and the connector for those it dials. Cheap to
/// clone.
#[derive(Clone)]
pub struct LinkTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.write_str("LinkTls { .. }")
    }
}

fn start_error(what: &str, error: impl fmt::Display) -> LinkError {
    LinkError::Start(format!("link TLS: {what}: {error}"))
}

impl LinkTls {
    /// From this node's PEM certificate chain (leaf first) and private key, and the PEM certificates it trusts
    /// for its peers (the cluster CA, or every node's certificate).
    pub fn from_pem(certificate_chain: &[u8], private_key: &[u8], trusted: &[u8]) -> Result<LinkTls, LinkError> {
        let chain = CertificateDer::pem_slice_iter(certificate_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| start_error("the certificate does not parse", error))?;
        if chain.is_empty() {
            return Err(start_error("the certificate file", "holds no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_slice(private_key).map_err(|error| start_error("no private key", error))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(trusted) {
            let certificate = certificate.map_err(|error| start_error("a trusted certificate does not parse", error))?;
            roots
                .add(certificate)
                .map_err(|error| start_error("a trusted certificate is not usable", error))?;
        }
        if roots.is_empty() {
            return Err(start_error("the trusted certificates file", "holds no CERTIFICATE block"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|error| start_error("the trusted certificates", error))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| start_error("protocol versions", error))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| start_error("the certificate and key", error))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| start_error("protocol versions", error))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|error| start_error("the certificate and key", error))?;
        Ok(LinkTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The acceptor for links peers open.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The connector for links this node dials.
    pub(crate) fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }

    /// The name a peer's certificate must carry: its node name.
    pub(crate) fn server_name(peer_name: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(peer_name.to_owned())
            .map_err(|_| format!("the node name '{peer_name}' is not a DNS name a link certificate can carry"))
    }
}
