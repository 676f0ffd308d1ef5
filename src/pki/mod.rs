//! The certificates runnel's mutual TLS stands on, in two halves with different users: `runnel certs` issues
//! them ([`issue`]: a private CA, server and client certificates signed by it), and the server reads who a
//! verified client certificate names ([`identity`]: the identity that owns jobs).

pub mod identity;
pub mod issue;

pub use identity::{check_identity, identity_from_cert_der, misleads_reader, IdentityError, MAX_IDENTITY_BYTES};
pub use issue::{cert_path, key_path, write_ca, write_client, write_server, PkiError, Validity};
