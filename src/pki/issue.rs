//! Issuing the certificates mutual TLS needs: a private CA, and server and client certificates signed by it.
//!
//! It exists so that a deployment needs nothing but the runnel binary: no openssl on the host, no hand-written
//! `openssl.cnf`, and certificates whose extensions are right for rustls' verifiers by construction. A set of files
//! is named by a prefix: `certs/alice` means `certs/alice.crt` (PEM certificate, 0644) and `certs/alice.key`
//! (PKCS#8 PEM private key, created 0600). Every key is ECDSA P-256, the one algorithm that rustls, Go and Python
//! grpcio clients all accept (grpcio rejects Ed25519). An existing key file is never overwritten: replacing a CA
//! key by accident would invalidate every certificate issued from it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

/// Private keys are readable by their owner only, and get that mode when the file is created so there is no
/// moment at which the key sits on disk world-readable.
const KEY_FILE_MODE: u32 = 0o600;

/// Certificates are public; anyone may read them.
const CERT_FILE_MODE: u32 = 0o644;

/// How far back `not_before` is set, so a certificate is usable at once on a machine whose clock runs behind.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);

/// 16 random bytes (127 bits once the sign bit is cleared): unique without any serial-number state on disk, and
/// well within RFC 5280's 20-octet limit.
const SERIAL_NUMBER_BYTES: usize = 16;

/// RFC 5280's `ub-common-name`; longer subject CNs are rejected by some X.509 tooling.
const MAX_COMMON_NAME_CHARS: usize = 64;

/// The longest DNS name (RFC 1035, in presentation form without the trailing dot).
const MAX_DNS_NAME_CHARS: usize = 253;

/// 9999-12-31T23:59:59Z: X.509 times have four-digit years.
const LATEST_ENCODABLE_TIME: Duration = Duration::from_secs(253_402_300_799);

const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

/// Why a CA, server or client certificate could not be written.
#[derive(Debug)]
pub enum PkiError {
    /// `<ca>.crt` or `<ca>.key` could not be read.
    ReadCa { path: PathBuf, ca_prefix: PathBuf, source: io::Error },
    /// The CA files were read but cannot sign: unparsable, not a CA, expired, or key and certificate differ.
    UnusableCa { path: PathBuf, reason: String },
    /// `<out>.key` already exists; a private key is never overwritten.
    KeyExists { path: PathBuf },
    /// The output prefix names a directory (or nothing) rather than a file stem.
    BadOutputPrefix { prefix: PathBuf },
    /// The directory that is to hold the output could not be created.
    CreateDir { path: PathBuf, source: io::Error },
    /// A certificate or key file could not be created or written.
    Write { path: PathBuf, source: io::Error },
    /// A name to be put in a certificate (CN, client name, DNS name) is not acceptable.
    InvalidName { what: &'static str, name: String, reason: &'static str },
    /// A server certificate was asked for without any DNS name or IP address to be valid for.
    NoServerNames,
    /// The validity period is empty or outside what X.509 can encode.
    InvalidValidity { reason: &'static str },
    /// Key generation or signing failed inside rcgen/ring.
    Generate { what: &'static str, source: rcgen::Error },
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::ReadCa { path, ca_prefix, source } => {
                let what = if path.extension().is_some_and(|ext| ext == "key") { "key" } else { "certificate" };
                write!(f, "cannot read CA {what} {}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::NotFound {
                    write!(f, " (make one with `runnel certs ca --out {}`)", ca_prefix.display())?;
                }
                Ok(())
            }
            PkiError::UnusableCa { path, reason } => write!(
                f,
                "CA {} cannot sign certificates: {reason} (pass the prefix of files written by `runnel certs ca`)",
                path.display()
            ),
            PkiError::KeyExists { path } => write!(
                f,
                "refusing to overwrite existing private key {}: delete it first to generate a new one, or choose \
                 another --out",
                path.display()
            ),
            PkiError::BadOutputPrefix { prefix } => write!(
                f,
                "output prefix {:?} must name a file stem, e.g. `certs/alice` writes certs/alice.crt and \
                 certs/alice.key",
                prefix.as_os_str()
            ),
            PkiError::CreateDir { path, source } => {
                write!(f, "cannot create directory {}: {source}", path.display())
            }
            PkiError::Write { path, source } => write!(f, "cannot write {}: {source}", path.display()),
            PkiError::InvalidName { what, name, reason } => write!(f, "invalid {what} {name:?}: {reason}"),
            PkiError::NoServerNames => write!(
                f,
                "a server certificate needs at least one DNS name or IP address that clients will connect to \
                 (--dns or --ip)"
            ),
            PkiError::InvalidValidity { reason } => write!(f, "invalid validity period: {reason}"),
            PkiError::Generate { what, source } => write!(f, "cannot generate {what}: {source}"),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PkiError::ReadCa { source, .. } | PkiError::CreateDir { source, .. } | PkiError::Write { source, .. } => {
                Some(source)
            }
            PkiError::Generate { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The period a certificate is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clock skew between machines) until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY),
        }
    }

    /// Checks the period is non-empty and encodable, which also keeps the conversion to rcgen's time type (which
    /// panics out of range) safe.
    fn check(&self) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::InvalidValidity { reason: "it must end after it begins" });
        }
        if self.not_before < UNIX_EPOCH {
            return Err(PkiError::InvalidValidity { reason: "it must not begin before 1970" });
        }
        if self.not_after > UNIX_EPOCH + LATEST_ENCODABLE_TIME {
            return Err(PkiError::InvalidValidity { reason: "it must end before the year 10000" });
        }
        Ok(())
    }
}

/// The certificate file of the set named by `prefix`: `<prefix>.crt`.
pub fn cert_path(prefix: &Path) -> PathBuf {
    path_with_suffix(prefix, ".crt")
}

/// The private key file of the set named by `prefix`: `<prefix>.key`.
pub fn key_path(prefix: &Path) -> PathBuf {
    path_with_suffix(prefix, ".key")
}

/// Appends rather than using `Path::with_extension`, so `certs/server.v2` becomes `certs/server.v2.crt`.
fn path_with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

/// Writes a self-signed CA to `<out>.crt` and `<out>.key`.
///
/// The CA may sign end-entity certificates only (path length 0): runnel has no use for intermediates, and
/// forbidding them limits what a stolen leaf key could be made into.
pub fn write_ca(out: &Path, common_name: &str, validity: &Validity) -> Result<(), PkiError> {
    check_output_prefix(out)?;
    check_common_name("CA name", common_name)?;
    validity.check()?;

    let key = generate_key()?;
    let mut params = base_params(common_name, validity);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|source| PkiError::Generate { what: "CA certificate", source })?;
    write_pair(out, &cert.pem(), &key.serialize_pem())
}

/// Writes a server certificate signed by the CA at prefix `ca` to `<out>.crt` and `<out>.key`.
///
/// It is valid for every name in `dns` and every address in `ips`; its subject CN is the first of them, for
/// humans reading it (TLS clients match the SANs only).
pub fn write_server(
    ca: &Path,
    out: &Path,
    dns: &[String],
    ips: &[IpAddr],
    validity: &Validity,
) -> Result<(), PkiError> {
    check_output_prefix(out)?;
    for name in dns {
        check_dns_name(name)?;
    }
    let common_name = match (dns.first(), ips.first()) {
        (Some(name), _) => name.clone(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => return Err(PkiError::NoServerNames),
    };
    validity.check()?;

    let mut subject_alt_names = Vec::with_capacity(dns.len() + ips.len());
    for name in dns {
        let ia5 = name.as_str().try_into().map_err(|_| PkiError::InvalidName {
            what: "DNS name",
            name: name.clone(),
            reason: "it must be ASCII",
        })?;
        subject_alt_names.push(SanType::DnsName(ia5));
    }
    subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));

    let mut params = leaf_params(&common_name, validity, ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = subject_alt_names;
    write_leaf(ca, out, &params)
}

/// Writes a client certificate for `name` signed by the CA at prefix `ca` to `<out>.crt` and `<out>.key`.
///
/// `name` becomes the subject CN, which is the identity [`identity_from_cert_der`](super::identity_from_cert_der)
/// gives the server.
pub fn write_client(ca: &Path, out: &Path, name: &str, validity: &Validity) -> Result<(), PkiError> {
    check_output_prefix(out)?;
    check_common_name("client name", name)?;
    validity.check()?;

    let params = leaf_params(name, validity, ExtendedKeyUsagePurpose::ClientAuth);
    write_leaf(ca, out, &params)
}

fn check_output_prefix(prefix: &Path) -> Result<(), PkiError> {
    let ends_in_separator = prefix.as_os_str().as_encoded_bytes().ends_with(b"/");
    if prefix.file_name().is_none() || ends_in_separator {
        return Err(PkiError::BadOutputPrefix { prefix: prefix.to_owned() });
    }
    Ok(())
}

fn check_common_name(what: &'static str, name: &str) -> Result<(), PkiError> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.chars().any(char::is_control) {
        "it must not contain control characters"
    } else if name.chars().count() > MAX_COMMON_NAME_CHARS {
        "it must be at most 64 characters (RFC 5280 ub-common-name)"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName { what, name: name.to_owned(), reason })
}

/// Catches typos that would produce a certificate no client can match, rather than fully validating RFC 1123.
fn check_dns_name(name: &str) -> Result<(), PkiError> {
    let reason = if name.is_empty() {
        "it must not be empty"
    } else if name.parse::<IpAddr>().is_ok() {
        "it is an IP address; give it with --ip so it becomes an IP SAN that clients can match"
    } else if name.len() > MAX_DNS_NAME_CHARS {
        "it must be at most 253 characters"
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*')) {
        "it may contain only ASCII letters, digits, '-', '.', '_' and a leading '*' label"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName { what: "DNS name", name: name.to_owned(), reason })
}

fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate { what: "P-256 key", source })
}

/// Parameters every certificate shares: subject CN, validity, and a random serial number.
fn base_params(common_name: &str, validity: &Validity) -> CertificateParams {
    let mut distinguished_name = DistinguishedName::new();
    distinguished_name.push(DnType::CommonName, common_name);

    let mut serial: [u8; SERIAL_NUMBER_BYTES] = rand::random();
    // Keep the DER INTEGER positive and its length fixed (no leading zero byte to strip).
    serial[0] = (serial[0] & 0x7f) | 0x40;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    // In range: checked by `Validity::check` before any certificate is built.
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params
}

/// A non-CA certificate for one TLS role. digitalSignature is what an ECDSA key does in a TLS 1.2/1.3 handshake.
fn leaf_params(common_name: &str, validity: &Validity, role: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = base_params(common_name, validity);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![role];
    params.use_authority_key_identifier_extension = true;
    params
}

fn write_leaf(ca: &Path, out: &Path, params: &CertificateParams) -> Result<(), PkiError> {
    let issuer = read_ca(ca)?;
    let key = generate_key()?;
    let cert = params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { what: "certificate", source })?;
    write_pair(out, &cert.pem(), &key.serialize_pem())
}

/// Loads the CA at `prefix` and checks it can actually issue certificates that will verify, because rcgen
/// signs with whatever it is given.
fn read_ca(prefix: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_file = cert_path(prefix);
    let key_file = key_path(prefix);
    let read = |path: &Path| {
        fs::read(path).map_err(|source| PkiError::ReadCa {
            path: path.to_owned(),
            ca_prefix: prefix.to_owned(),
            source,
        })
    };
    let cert_pem = read(&cert_file)?;
    let key_pem = read(&key_file)?;
    let unusable = |path: &Path, reason: String| PkiError::UnusableCa { path: path.to_owned(), reason };

    let cert_der = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|err| unusable(&cert_file, format!("no PEM certificate in it ({err})")))?;
    let key_text = String::from_utf8(key_pem).map_err(|_| unusable(&key_file, "it is not PEM text".into()))?;
    let key = KeyPair::from_pem(&key_text)
        .map_err(|err| unusable(&key_file, format!("not a usable PKCS#8 private key ({err})")))?;

    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|err| unusable(&cert_file, format!("not a valid X.509 certificate ({err})")))?;
    check_ca_certificate(&cert).map_err(|reason| unusable(&cert_file, reason))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(unusable(&key_file, format!("this key does not belong to {}", cert_file.display())));
    }

    Issuer::from_ca_cert_der(&cert_der, key)
        .map_err(|err| unusable(&cert_file, format!("rcgen cannot read it as an issuer ({err})")))
}

fn check_ca_certificate(cert: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = cert
        .basic_constraints()
        .map_err(|err| format!("its basicConstraints extension is malformed ({err})"))?
        .is_some_and(|ext| ext.value.ca);
    if !is_ca {
        return Err("it is not a CA certificate (no basicConstraints CA:TRUE)".into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let not_after = cert.validity().not_after;
    if not_after.timestamp() < i64::try_from(now).unwrap_or(i64::MAX) {
        return Err(format!("it expired on {not_after}"));
    }
    Ok(())
}

/// Writes the key first, with `create_new` so an existing key is refused atomically, then the certificate; if the
/// certificate cannot be written the new key is removed so a retry is not refused.
fn write_pair(out: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| PkiError::CreateDir { path: parent.to_owned(), source })?;
    }
    let key_file = key_path(out);
    let cert_file = cert_path(out);

    let mut key_options = OpenOptions::new();
    key_options.write(true).create_new(true).mode(KEY_FILE_MODE);
    match write_file(&key_file, &key_options, key_pem) {
        Ok(()) => {}
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => {
            return Err(PkiError::KeyExists { path: key_file });
        }
        Err(source) => {
            // A partly written key is useless and would block the next attempt.
            let _ = fs::remove_file(&key_file);
            return Err(PkiError::Write { path: key_file, source });
        }
    }

    let mut cert_options = OpenOptions::new();
    cert_options.write(true).create(true).truncate(true).mode(CERT_FILE_MODE);
    if let Err(source) = write_file(&cert_file, &cert_options, cert_pem) {
        let _ = fs::remove_file(&key_file);
        return Err(PkiError::Write { path: cert_file, source });
    }
    Ok(())
}

fn write_file(path: &Path, options: &OpenOptions, contents: &str) -> io::Result<()> {
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Helpers for the tests of this folder: a CA in a scratch directory, and certificates with any subject.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use crate::scratch::ScratchDir;

    pub fn cert_der(prefix: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(cert_path(prefix)).unwrap()
    }

    /// A scratch directory with a CA at prefix `ca` in it.
    pub fn test_ca() -> (ScratchDir, PathBuf) {
        let dir = ScratchDir::new("pki-test");
        let ca = dir.join("ca");
        write_ca(&ca, "runnel test CA", &Validity::days_from_now(30)).unwrap();
        (dir, ca)
    }

    /// A second CA in `dir`, unrelated to the first.
    pub fn write_other_ca(dir: &ScratchDir) -> PathBuf {
        let other = dir.join("other-ca");
        write_ca(&other, "someone else", &Validity::days_from_now(30)).unwrap();
        other
    }

    /// A client certificate for `name`, valid for a day, issued by `ca` into `dir`.
    pub fn write_test_client(dir: &ScratchDir, ca: &Path, name: &str) -> PathBuf {
        let client = dir.join(name);
        write_client(ca, &client, name, &Validity::days_from_now(1)).unwrap();
        client
    }

    /// Issues a certificate with arbitrary subject and SANs from the CA at `ca`, for the identity fallbacks.
    pub fn issue_with_rcgen(ca: &Path, common_name: Option<&str>, alt_names: Vec<SanType>) -> CertificateDer<'static> {
        let mut name = DistinguishedName::new();
        if let Some(common_name) = common_name {
            name.push(DnType::CommonName, common_name);
        }
        issue_with(ca, name, alt_names)
    }

    /// A client certificate from `ca` with this subject and no SAN.
    pub fn issue_with_name(ca: &Path, name: DistinguishedName) -> CertificateDer<'static> {
        issue_with(ca, name, Vec::new())
    }

    fn issue_with(ca: &Path, name: DistinguishedName, alt_names: Vec<SanType>) -> CertificateDer<'static> {
        let issuer = read_ca(ca).unwrap();
        let mut params = leaf_params("placeholder", &Validity::days_from_now(1), ExtendedKeyUsagePurpose::ClientAuth);
        params.distinguished_name = name;
        params.subject_alt_names = alt_names;
        let key = generate_key().unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, RootCertStore};

    use super::testing::{cert_der, test_ca, write_other_ca, write_test_client};
    use crate::scratch::ScratchDir;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &Path) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(cert_der(ca)).unwrap();
        Arc::new(roots)
    }

    fn verify_client(ca: &Path, client: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
        verifier.verify_client_cert(&cert_der(client), &[], UnixTime::now()).map(|_| ())
    }

    fn verify_server(ca: &Path, server: &Path, name: ServerName<'_>) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().unwrap();
        verifier.verify_server_cert(&cert_der(server), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn writes_ca_server_and_client_that_rustls_accepts() {
        let (dir, ca) = test_ca();
        let server = dir.join("out/server");
        let client = dir.join("out/alice");
        let ips = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        write_server(&ca, &server, &["localhost".into()], &ips, &Validity::days_from_now(30)).unwrap();
        write_client(&ca, &client, "alice", &Validity::days_from_now(30)).unwrap();

        for prefix in [&ca, &server, &client] {
            assert!(cert_path(prefix).is_file(), "{}", cert_path(prefix).display());
            let key_mode = fs::metadata(key_path(prefix)).unwrap().permissions().mode() & 0o777;
            assert_eq!(key_mode, 0o600, "{}", key_path(prefix).display());
        }

        verify_client(&ca, &client).unwrap();
        verify_server(&ca, &server, ServerName::try_from("localhost").unwrap()).unwrap();
        verify_server(&ca, &server, ServerName::IpAddress(Ipv4Addr::LOCALHOST.into())).unwrap();
        verify_server(&ca, &server, ServerName::IpAddress(Ipv6Addr::LOCALHOST.into())).unwrap();

        // Each certificate is good for its own role only.
        assert!(verify_server(&ca, &server, ServerName::try_from("example.com").unwrap()).is_err());
        assert!(verify_client(&ca, &server).is_err());
        assert!(verify_server(&ca, &client, ServerName::try_from("localhost").unwrap()).is_err());
    }

    #[test]
    fn client_from_another_ca_is_rejected() {
        let (dir, ca) = test_ca();
        let other_ca = write_other_ca(&dir);
        let client = dir.join("mallory");
        write_client(&other_ca, &client, "alice", &Validity::days_from_now(30)).unwrap();
        assert!(verify_client(&ca, &client).is_err());
    }

    #[test]
    fn expired_client_certificate_is_rejected() {
        let (dir, ca) = test_ca();
        let client = dir.join("expired");
        let now = SystemTime::now();
        let expired = Validity {
            not_before: now - Duration::from_secs(10 * SECONDS_PER_DAY),
            not_after: now - Duration::from_secs(SECONDS_PER_DAY),
        };
        write_client(&ca, &client, "alice", &expired).unwrap();

        match verify_client(&ca, &client) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {}
            other => panic!("expected an expired-certificate error, got {other:?}"),
        }
    }

    #[test]
    fn existing_key_is_never_overwritten() {
        let (_dir, ca) = test_ca();
        let original_key = fs::read(key_path(&ca)).unwrap();
        let original_cert = fs::read(cert_path(&ca)).unwrap();

        let err = write_ca(&ca, "again", &Validity::days_from_now(30)).unwrap_err();
        assert!(matches!(&err, PkiError::KeyExists { path } if *path == key_path(&ca)), "{err:?}");
        assert!(err.to_string().contains(&key_path(&ca).display().to_string()), "{err}");
        assert_eq!(fs::read(key_path(&ca)).unwrap(), original_key);
        assert_eq!(fs::read(cert_path(&ca)).unwrap(), original_cert);

        // Issuing into the CA's own prefix is the same mistake.
        let err = write_client(&ca, &ca, "alice", &Validity::days_from_now(1)).unwrap_err();
        assert!(matches!(err, PkiError::KeyExists { .. }), "{err:?}");
        assert_eq!(fs::read(key_path(&ca)).unwrap(), original_key);
    }

    #[test]
    fn missing_ca_error_names_the_file_and_the_fix() {
        let dir = ScratchDir::new("pki-test");
        let ca = dir.join("nope/ca");
        let err = write_client(&ca, &dir.join("alice"), "alice", &Validity::days_from_now(1)).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with(&format!("cannot read CA certificate {}", cert_path(&ca).display())), "{message}");
        assert!(message.contains(&format!("runnel certs ca --out {}", ca.display())), "{message}");
        assert!(!key_path(&dir.join("alice")).exists());
    }

    #[test]
    fn ca_key_must_match_ca_certificate() {
        let (dir, ca) = test_ca();
        let other_ca = write_other_ca(&dir);
        fs::copy(key_path(&other_ca), key_path(&ca)).unwrap();

        let err = write_client(&ca, &dir.join("alice"), "alice", &Validity::days_from_now(1)).unwrap_err();
        assert!(matches!(&err, PkiError::UnusableCa { path, .. } if *path == key_path(&ca)), "{err:?}");
    }

    #[test]
    fn leaf_certificate_cannot_act_as_ca() {
        let (dir, ca) = test_ca();
        let client = write_test_client(&dir, &ca, "alice");
        let err = write_client(&client, &dir.join("bob"), "bob", &Validity::days_from_now(1)).unwrap_err();
        assert!(matches!(err, PkiError::UnusableCa { .. }), "{err:?}");
    }

    #[test]
    fn bad_names_and_periods_are_rejected() {
        let (dir, ca) = test_ca();
        let out = dir.join("x");
        let week = Validity::days_from_now(7);

        for name in ["", "al\u{7}ice", &"a".repeat(65)] {
            let err = write_client(&ca, &out, name, &week).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName { .. }), "{name:?}: {err:?}");
        }
        assert!(matches!(write_server(&ca, &out, &[], &[], &week), Err(PkiError::NoServerNames)));
        for dns in ["", "127.0.0.1", "bad name", "ünicode.example"] {
            let err = write_server(&ca, &out, &[dns.to_owned()], &[], &week).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName { .. }), "{dns:?}: {err:?}");
        }
        let backwards = Validity { not_before: week.not_after, not_after: week.not_before };
        assert!(matches!(write_client(&ca, &out, "alice", &backwards), Err(PkiError::InvalidValidity { .. })));
        let too_long = Validity::days_from_now(u32::MAX);
        assert!(matches!(write_client(&ca, &out, "alice", &too_long), Err(PkiError::InvalidValidity { .. })));
        assert!(matches!(write_client(&ca, &dir.join("sub/"), "alice", &week), Err(PkiError::BadOutputPrefix { .. })));

        assert!(!key_path(&out).exists());
    }

    #[test]
    fn prefix_gets_suffix_appended() {
        assert_eq!(cert_path(Path::new("certs/server.v2")), Path::new("certs/server.v2.crt"));
        assert_eq!(key_path(Path::new("ca")), Path::new("ca.key"));
    }
}
