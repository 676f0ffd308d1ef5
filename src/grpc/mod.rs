//! The gRPC-over-HTTP/2 wire rules, kept apart from any connection or job state so the server and the
//! `client` subcommand share one implementation.
//!
//! [`Code`]/[`Status`] are the status model; [`MessageDecoder`] turns DATA-frame bytes (whose boundaries do not
//! line up with messages) into whole messages; [`encode_message`] adds the 5-byte length prefix; `headers`
//! builds and reads the headers and trailers of a call (`grpc-timeout`, `grpc-status`, a percent-encoded
//! `grpc-message`); [`Responder`] sends one server call's response in the order the protocol requires.

mod codec;
mod headers;
mod response;
mod status;

pub use codec::{encode_message, encode_message_into, FramingError, MessageDecoder, MESSAGE_HEADER_LEN};
pub use headers::{
    format_timeout, parse_timeout, percent_decode_message, percent_encode_message, request, status_in, SERVER_VERSION,
    TIMEOUT,
};
pub use response::Responder;
pub use status::{Code, Status};

/// Largest request message the server accepts; what gRPC servers in other languages default to.
pub const MAX_REQUEST_MESSAGE: usize = 4 * 1024 * 1024;

/// Largest response message the client accepts. Responses are bounded by the server's own choices
/// (ListJobs of `--max-jobs` jobs is the largest), so allow more than a request.
pub const MAX_RESPONSE_MESSAGE: usize = 64 * 1024 * 1024;

pub const CONTENT_TYPE: &str = "application/grpc";

/// The `:path` of every method the server serves; the server routes on these and the client calls them.
pub mod path {
    pub const START_JOB: &str = "/runnel.v1.JobService/StartJob";
    pub const STOP_JOB: &str = "/runnel.v1.JobService/StopJob";
    pub const GET_JOB: &str = "/runnel.v1.JobService/GetJob";
    pub const LIST_JOBS: &str = "/runnel.v1.JobService/ListJobs";
    pub const WAIT_JOB: &str = "/runnel.v1.JobService/WaitJob";
    pub const STREAM_OUTPUT: &str = "/runnel.v1.JobService/StreamOutput";
    pub const REMOVE_JOB: &str = "/runnel.v1.JobService/RemoveJob";
    pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
    pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
    pub const REFLECTION_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    pub const REFLECTION_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
}
