//! A StartJob request end to end: protobuf bytes, the wire's conversion, then validation into a job spec. A
//! request either fails with a short message or yields a spec whose every string the launch can hand to the
//! kernel (no NUL: `CString::new` would panic there) and whose size is within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use runnel::jobs::{JobSpec, QUOTE_LIMIT};
use runnel::proto::StartJobRequest;
use runnel::server::wire;

/// The server's default --max-job-request.
const MAX_REQUEST_BYTES: usize = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = StartJobRequest::decode(data) else { return };
    match JobSpec::validate(wire::start_request(request), MAX_REQUEST_BYTES) {
        Err(err) => {
            // An error quotes a bounded amount of what the client sent, whatever it sent.
            let message = err.to_string();
            assert!(message.len() <= 4 * QUOTE_LIMIT + 512, "a {}-byte error message", message.len());
        }
        Ok(spec) => {
            for text in spec.environment().iter().chain(std::iter::once(&spec.command)).chain(&spec.args) {
                assert!(!text.contains('\0'), "a NUL reached the spec: {text:?}");
            }
            for candidate in spec.exec_candidates() {
                assert!(!candidate.as_os_str().as_encoded_bytes().contains(&0), "a NUL in {candidate:?}");
            }
            if let Some(dir) = &spec.working_dir {
                assert!(dir.is_absolute() && !dir.as_os_str().as_encoded_bytes().contains(&0), "{dir:?}");
            }
        }
    }
});
