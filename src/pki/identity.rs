//! The rule that turns a verified client certificate into the identity that owns jobs: its subject CN;
//! without one, its first DNS SAN; without that, its first URI SAN. A certificate that could be read as two
//! identities (two CNs), or whose identity could deceive a reader of logs and listings (control or
//! direction-changing characters, or more than [`MAX_IDENTITY_BYTES`]), names none.

// This module reads bytes from outside (a client, a job, a file): no panicking shortcuts on them, as one
// reachable panic aborts the server and every job with it. Fuzzed: see fuzz/ and README, "Fuzzing".
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;

use x509_parser::extensions::GeneralName;

/// The longest identity accepted: room for any sensible user or service name, and bounded in what every job
/// record, log line and listing repeats.
pub const MAX_IDENTITY_BYTES: usize = 128;

/// Why no client identity could be taken from a (verified) certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// The certificate is not parsable DER X.509.
    Malformed(String),
    /// The field the identity comes from is present but not a usable name.
    InvalidIdentity { field: &'static str, reason: &'static str },
    /// The certificate has no subject CN, DNS SAN or URI SAN.
    NoIdentity,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Malformed(detail) => write!(f, "client certificate is not valid X.509: {detail}"),
            IdentityError::InvalidIdentity { field, reason } => {
                write!(f, "client certificate's {field} cannot serve as an identity: it {reason}")
            }
            IdentityError::NoIdentity => write!(
                f,
                "client certificate names no identity: it has no subject CN, DNS SAN or URI SAN (issue one with \
                 `runnel certs client --name NAME`)"
            ),
        }
    }
}

impl std::error::Error for IdentityError {}

/// The identity of a client: its subject CN; without one, its first DNS SAN; without that, its first URI SAN.
///
/// Call this only on a certificate rustls has already verified against the CA: it trusts what it reads. A present
/// but unusable CN (not text, empty, control characters) is an error rather than a reason to fall back to a SAN,
/// so one certificate can never be read as two different identities.
pub fn identity_from_cert_der(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|err| IdentityError::Malformed(err.to_string()))?;

    let mut common_names = cert.subject().iter_common_name();
    if let (Some(_), Some(_)) = (common_names.next(), common_names.next()) {
        return Err(IdentityError::InvalidIdentity {
            field: "subject",
            reason: "has more than one CN, so it could be read as more than one identity",
        });
    }
    if let Some(common_name) = cert.subject().iter_common_name().next() {
        let text = common_name.as_str().map_err(|_| IdentityError::InvalidIdentity {
            field: "subject CN",
            reason: "is not a UTF-8, printable or IA5 string",
        })?;
        return checked_identity("subject CN", text);
    }

    let alt_names = cert.subject_alternative_name().map_err(|err| IdentityError::Malformed(err.to_string()))?;
    let general_names = alt_names.map(|ext| ext.value.general_names.as_slice()).unwrap_or_default();
    let first_dns = general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some(*dns),
        _ => None,
    });
    if let Some(dns) = first_dns {
        return checked_identity("DNS SAN", dns);
    }
    let first_uri = general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match first_uri {
        Some(uri) => checked_identity("URI SAN", uri),
        None => Err(IdentityError::NoIdentity),
    }
}

/// Checks that `name` can serve as an identity (for `runnel certs client --name`): the reason if not.
pub fn check_identity(name: &str) -> Result<(), &'static str> {
    match checked_identity("name", name) {
        Ok(_) => Ok(()),
        Err(IdentityError::InvalidIdentity { reason, .. }) => Err(reason),
        Err(_) => Err("is not a usable identity"),
    }
}

/// Identities end up in logs and job listings, so control characters (which could forge log lines or drive a
/// terminal) and characters that change the direction of text (which make one name look like another) are
/// refused, and so is a name over [`MAX_IDENTITY_BYTES`].
fn checked_identity(field: &'static str, text: &str) -> Result<String, IdentityError> {
    let reason = if text.is_empty() {
        "is empty"
    } else if text.len() > MAX_IDENTITY_BYTES {
        "is longer than 128 bytes"
    } else if text.chars().any(char::is_control) {
        "contains control characters"
    } else if text.chars().any(misleads_reader) {
        "contains invisible characters or ones that change the direction of text"
    } else {
        return Ok(text.to_owned());
    };
    Err(IdentityError::InvalidIdentity { field, reason })
}

/// Characters that make text read other than it is: Unicode's bidirectional marks, embeddings, overrides and
/// isolates, and invisible ones (zero-width spaces and joiners, the word joiner, the byte-order mark, the soft
/// hyphen, the line and paragraph separators), with which `alice\u{200b}` would show as `alice`.
pub fn misleads_reader(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    use rcgen::SanType;

    use super::super::issue::testing::{cert_der, issue_with_rcgen, test_ca, write_test_client};

    #[test]
    fn identity_is_the_common_name() {
        let (dir, ca) = test_ca();
        let client = write_test_client(&dir, &ca, "alice");
        assert_eq!(identity_from_cert_der(&cert_der(&client)).unwrap(), "alice");
    }

    #[test]
    fn identity_falls_back_to_dns_then_uri_san() {
        let (_dir, ca) = test_ca();
        let dns = SanType::DnsName("worker-1.example".try_into().unwrap());
        let uri = SanType::URI("spiffe://example/worker".try_into().unwrap());
        let ip = SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST));

        let der = issue_with_rcgen(&ca, None, vec![ip.clone(), uri.clone(), dns]);
        assert_eq!(identity_from_cert_der(&der).unwrap(), "worker-1.example");

        let der = issue_with_rcgen(&ca, None, vec![ip.clone(), uri]);
        assert_eq!(identity_from_cert_der(&der).unwrap(), "spiffe://example/worker");

        let der = issue_with_rcgen(&ca, None, vec![ip]);
        assert_eq!(identity_from_cert_der(&der), Err(IdentityError::NoIdentity));

        let der = issue_with_rcgen(&ca, None, vec![]);
        assert_eq!(identity_from_cert_der(&der), Err(IdentityError::NoIdentity));
    }

    #[test]
    fn unusable_common_name_is_an_error_not_a_fallback() {
        let (_dir, ca) = test_ca();
        let dns = SanType::DnsName("bob.example".try_into().unwrap());
        let der = issue_with_rcgen(&ca, Some("alice\nINFO forged"), vec![dns.clone()]);
        assert!(matches!(
            identity_from_cert_der(&der),
            Err(IdentityError::InvalidIdentity { field: "subject CN", .. })
        ));
        let der = issue_with_rcgen(&ca, Some(""), vec![dns]);
        assert!(matches!(
            identity_from_cert_der(&der),
            Err(IdentityError::InvalidIdentity { field: "subject CN", .. })
        ));
    }

    #[test]
    fn two_common_names_long_names_and_direction_changes_name_no_identity() {
        let (_dir, ca) = test_ca();
        let two = issue_with_extra_common_name(&ca, "admin", "alice");
        let err = identity_from_cert_der(&two).unwrap_err();
        assert!(err.to_string().contains("more than one CN"), "{err}");

        let longest = "a".repeat(MAX_IDENTITY_BYTES);
        let der = issue_with_rcgen(&ca, Some(&longest), vec![]);
        assert_eq!(identity_from_cert_der(&der).unwrap(), longest);
        let der = issue_with_rcgen(&ca, Some(&format!("{longest}a")), vec![]);
        assert!(identity_from_cert_der(&der).unwrap_err().to_string().contains("longer than 128 bytes"));
        let dns = SanType::DnsName(format!("{longest}.example").try_into().unwrap());
        let der = issue_with_rcgen(&ca, None, vec![dns]);
        assert!(identity_from_cert_der(&der).unwrap_err().to_string().contains("DNS SAN"));

        for deceptive in ["alice\u{202e}nimda", "alice\u{200b}", "al\u{ad}ice", "\u{feff}alice"] {
            let der = issue_with_rcgen(&ca, Some(deceptive), vec![]);
            assert!(identity_from_cert_der(&der).unwrap_err().to_string().contains("invisible"), "{deceptive:?}");
        }
        let der = issue_with_rcgen(&ca, Some("alice\u{1b}[31m"), vec![]);
        assert!(identity_from_cert_der(&der).unwrap_err().to_string().contains("control characters"));
    }

    /// A certificate whose subject has the CN `first` and, after it, a second CN `second`.
    fn issue_with_extra_common_name(ca: &std::path::Path, first: &str, second: &str) -> Vec<u8> {
        use rcgen::{DistinguishedName, DnType};
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, first);
        // The CN's own OID under another key: rcgen keeps one value per key.
        name.push(DnType::CustomDnType(vec![2, 5, 4, 3]), second);
        super::super::issue::testing::issue_with_name(ca, name).to_vec()
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(identity_from_cert_der(b"not a certificate"), Err(IdentityError::Malformed(_))));
    }
}
