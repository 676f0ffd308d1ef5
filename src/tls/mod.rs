//! Mutual TLS: building the rustls configurations (TLS 1.3 only, ALPN `h2`, client certificates required and
//! verified against `--client-ca`) and the non-blocking transport h2 runs over.
//!
//! Keys come from a PEM file or from PEM text in `RUNNEL_TLS_KEY`, which is removed from the process
//! environment as soon as it is read so no job (and no `/proc/PID/environ` reader) can see it.

mod transport;

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

/// The server side: TLS 1.3 only, ALPN h2, a client certificate chaining to `client_ca` required.
pub fn server_config(cert: &Path, key: &KeySource, client_ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(load_roots(client_ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("client CA {}: {e}", client_ca.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs("server certificate", cert)?, key.load()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: TLS 1.3 only, ALPN h2, the server verified against `ca`, our certificate presented.
pub fn client_config(cert: &Path, key: &KeySource, ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(client_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(load_roots(ca)?)
        .with_client_auth_cert(load_certs("client certificate", cert)?, key.load()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Parses the name the server's certificate must carry.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}
