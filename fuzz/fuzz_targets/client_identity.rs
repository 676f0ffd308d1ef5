//! The identity of a client, from arbitrary certificate bytes (the server reads it only after rustls verified
//! the chain, but the parser must hold on anything): no panic, and any identity it yields passes the rules
//! every identity must (`pki::check_identity`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel::pki;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = pki::identity_from_cert_der(data) {
        assert_eq!(pki::check_identity(&identity), Ok(()), "{identity:?}");
        assert!(identity.len() <= pki::MAX_IDENTITY_BYTES);
    }
});
