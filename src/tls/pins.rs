//! Certificate pinning and revocation: which exact certificates a peer may present.
//!
//! A CA says who may connect; a pin narrows that to named certificates (`--client-cert-pin` on the server,
//! `--server-pin` on the client), or, without a CA, trusts exactly those self-signed ones, as SSH trusts known
//! host keys. A pin is the SHA-256 of the certificate's DER, written `sha256:` and 64 hex digits, what
//! `runnel certs fingerprint FILE` prints. Revocation is the CA's: `--crl FILE` makes the server refuse client
//! certificates its CA has revoked (rustls/webpki check the CRL along the chain).
//!
//! The verifiers here wrap rustls' own: chain, validity, signature and CRL checks are webpki's, and a pin is one
//! more condition on the leaf; without a CA, the pin replaces the chain and the handshake signature is still
//! verified with the certificate's key.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(certificate: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
        #[allow(clippy::expect_used, reason = "a SHA-256 digest is 32 bytes whatever it was taken of")]
        Fingerprint(digest.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// Parses `sha256:` and 64 hex digits (either case; `:` between bytes allowed, as openssl prints them).
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let bad = || format!("{text:?}: expected sha256: and 64 hex digits, as `runnel certs fingerprint FILE` prints");
        let hex: Vec<u8> =
            text.trim().strip_prefix("sha256:").ok_or_else(bad)?.bytes().filter(|&b| b != b':').collect();
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }

    /// Every fingerprint in a file, one per line; blank lines and `#` comments are skipped.
    pub fn parse_file(text: &str) -> Result<Vec<Fingerprint>, String> {
        text.lines()
            .map(|line| line.split('#').next().unwrap_or("").trim())
            .filter(|line| !line.is_empty())
            .map(Fingerprint::parse)
            .collect()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Both verifiers' answer to a TLS 1.2 signature: the configurations offer TLS 1.3 only, so one never comes.
const TLS12_REFUSED: Result<HandshakeSignatureValid, Error> =
    Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered));

/// The error a handshake fails with when a certificate is not pinned.
fn not_pinned(whose: &str, certificate: &CertificateDer<'_>) -> Error {
    let message = format!("the {whose} certificate {} is not pinned", Fingerprint::of(certificate));
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(PinError(message)))))
}

#[derive(Debug)]
struct PinError(String);

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PinError {}

/// A self-signed (pinned) certificate's validity period, which no chain check looks at here.
fn check_validity(certificate: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = now.as_secs() as i64;
    let validity = parsed.validity();
    if now < validity.not_before.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// The server's check of client certificates: a CA's (with its CRLs) and pins, or pins alone.
#[derive(Debug)]
pub struct PinnedClients {
    /// Chain, validity and revocation checks; `None`: pins alone (self-signed clients).
    ca: Option<Arc<dyn ClientCertVerifier>>,
    /// Empty with a CA: any certificate it verified.
    pins: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClients {
    pub fn new(ca: Option<Arc<dyn ClientCertVerifier>>, pins: Vec<Fingerprint>, provider: &CryptoProvider) -> Self {
        PinnedClients { ca, pins, algorithms: provider.signature_verification_algorithms }
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match &self.ca {
            Some(ca) => {
                ca.verify_client_cert(end_entity, intermediates, now)?;
            }
            None => check_validity(end_entity, now)?,
        }
        if !self.pins.is_empty() && !self.pins.contains(&Fingerprint::of(end_entity)) {
            return Err(not_pinned("client", end_entity));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        TLS12_REFUSED
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client's check of the server's certificate: the CA's (name included) and a pin, or the pin alone.
#[derive(Debug)]
pub struct PinnedServer {
    ca: Option<Arc<dyn ServerCertVerifier>>,
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub fn new(ca: Option<Arc<dyn ServerCertVerifier>>, pin: Option<Fingerprint>, provider: &CryptoProvider) -> Self {
        PinnedServer { ca, pin, algorithms: provider.signature_verification_algorithms }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.ca {
            Some(ca) => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            }
            None => check_validity(end_entity, now)?,
        }
        if self.pin.is_some_and(|pin| pin != Fingerprint::of(end_entity)) {
            return Err(not_pinned("server", end_entity));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        TLS12_REFUSED
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_print_and_refuse_malformed_text() {
        let pin = Fingerprint::of(b"certificate");
        assert_eq!(Fingerprint::parse(&pin.to_string()), Ok(pin));
        let upper_with_colons = pin.to_string().as_bytes()[7..]
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&format!("sha256:{upper_with_colons}")), Ok(pin));
        for bad in ["", "sha256:", "md5:00", &pin.to_string()[..70], &format!("{pin}00"), "sha256:zz"] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad:?}");
        }
        let file = format!("# pinned clients\n{pin}  # alice\n\n");
        assert_eq!(Fingerprint::parse_file(&file), Ok(vec![pin]));
        assert!(Fingerprint::parse_file("not a pin").is_err());
    }
}
