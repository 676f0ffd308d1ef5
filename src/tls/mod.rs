//! Mutual TLS: building the rustls configurations (TLS 1.3 only, ALPN `h2`, client certificates required and
//! verified against `--client-ca`) and the non-blocking transport h2 runs over.
//!
//! Keys come from a PEM file or from PEM text in `RUNNEL_TLS_KEY`, which is removed from the process
//! environment as soon as it is read so no job (and no `/proc/PID/environ` reader) can see it.

mod pins;
mod transport;

pub use pins::Fingerprint;
pub use transport::TlsStream;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol id for HTTP/2; gRPC clients refuse a connection without it.
const ALPN_H2: &[u8] = b"h2";

/// Environment variable that may carry the private key as PEM text instead of a file.
pub const KEY_ENV: &str = "RUNNEL_TLS_KEY";

/// What went wrong loading TLS material.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or holds no usable PEM item.
    Pem { what: &'static str, path: PathBuf, reason: String },
    /// `RUNNEL_TLS_KEY` is set but does not hold a private key.
    KeyEnv(String),
    /// Neither a key file nor `RUNNEL_TLS_KEY` was given.
    NoKey,
    /// rustls refused the combination (key does not match certificate, unusable CA, ...).
    Config(String),
    /// The name to verify the server against is not a valid DNS name or IP address.
    ServerName(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { what, path, reason } => write!(f, "cannot load {what} from {}: {reason}", path.display()),
            TlsError::KeyEnv(reason) => write!(f, "cannot load the private key from {KEY_ENV}: {reason}"),
            TlsError::NoKey => write!(f, "no private key: pass --key FILE or set {KEY_ENV} to the PEM text"),
            TlsError::Config(reason) => write!(f, "TLS configuration rejected: {reason}"),
            TlsError::ServerName(name) => write!(f, "{name:?} is not a valid server name (DNS name or IP address)"),
        }
    }
}

/// Where a private key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    File(PathBuf),
    /// PEM text taken out of `RUNNEL_TLS_KEY`.
    Pem(String),
}

impl KeySource {
    /// `RUNNEL_TLS_KEY` if set (and removes it from the environment), otherwise the file, if given.
    pub fn from_env_or(file: Option<PathBuf>) -> Option<KeySource> {
        match std::env::var(KEY_ENV) {
            Ok(pem) => {
                // Called during start-up, before the reactor or any job exists; the process has one thread.
                std::env::remove_var(KEY_ENV);
                Some(KeySource::Pem(pem))
            }
            Err(_) => file.map(KeySource::File),
        }
    }

    fn load(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        match self {
            KeySource::File(path) => PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
                what: "private key",
                path: path.clone(),
                reason: e.to_string(),
            }),
            KeySource::Pem(text) => {
                PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| TlsError::KeyEnv(e.to_string()))
            }
        }
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's provider: the same suites, AES-128-GCM first. The server follows the client's order, and
/// AES-128-GCM (TLS 1.3's mandatory suite) has 10 rounds to AES-256-GCM's 14, so costs less per byte on both
/// ends of an output stream.
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Which client certificates the server accepts: those chaining to `ca` (and not revoked by one of `crls`), of
/// which only `pins` if any are given; without a CA, exactly the `pins`.
#[derive(Debug, Clone, Default)]
pub struct ClientTrust {
    pub ca: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
    pub pins: Vec<Fingerprint>,
}

/// The server side: TLS 1.3 only, ALPN h2, a client certificate that `clients` trusts required.
pub fn server_config(cert: &Path, key: &KeySource, clients: &ClientTrust) -> Result<Arc<ServerConfig>, TlsError> {
    let ca_verifier = match &clients.ca {
        Some(ca) => {
            let mut crls = Vec::new();
            for path in &clients.crls {
                let pem_error = |reason: String| TlsError::Pem { what: "CRL", path: path.clone(), reason };
                let found = rustls::pki_types::CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| pem_error(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error(e.to_string()))?;
                if found.is_empty() {
                    return Err(pem_error("no X509 CRL block in the file".into()));
                }
                crls.extend(found);
            }
            let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider());
            if !crls.is_empty() {
                // The client's own certificate is checked against the CRLs (an intermediate CA without a CRL of
                // its issuer given is not a reason to refuse everyone), and a CRL past its next update refuses
                // every client until a fresh one is given: revocation fails closed.
                builder = builder.with_crls(crls).only_check_end_entity_revocation().enforce_revocation_expiration();
            }
            let verifier = builder.build().map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
            Some(verifier)
        }
        None if clients.pins.is_empty() => return Err(TlsError::Config("no client CA and no client pin".into())),
        None => None,
    };
    let verifier = Arc::new(pins::PinnedClients::new(ca_verifier, clients.pins.clone(), &provider()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs("server certificate", cert)?, key.load()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: TLS 1.3 only, ALPN h2, the server verified against `ca` and, if given, `pin` (without a CA,
/// the pin alone), our certificate presented.
pub fn client_config(
    cert: &Path,
    key: &KeySource,
    ca: Option<&Path>,
    pin: Option<Fingerprint>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca_verifier = match ca {
        Some(ca) => {
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(load_roots(ca)?, client_provider())
                    .build()
                    .map_err(|e| TlsError::Config(format!("CA {}: {e}", ca.display())))?;
            Some(verifier as Arc<dyn rustls::client::danger::ServerCertVerifier>)
        }
        None if pin.is_none() => return Err(TlsError::Config("no CA and no server pin".into())),
        None => None,
    };
    let verifier = Arc::new(pins::PinnedServer::new(ca_verifier, pin, &client_provider()));
    let mut config = ClientConfig::builder_with_provider(client_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(load_certs("client certificate", cert)?, key.load()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Parses the name the server's certificate must carry.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}
