//! runnel: one static binary that runs Linux jobs for remote clients over mutual-TLS gRPC, on one mio reactor.
//!
//! The library exists so the integration tests can drive the same client code the CLI uses; the binary in
//! `main.rs` is a thin dispatcher over [`cli`]. See `docs/architecture.md` for how the modules fit together.

pub mod cgroup;
pub mod cli;
pub mod client;
pub mod grpc;
pub mod isolation;
pub mod jobs;
pub mod pki;
pub mod proto;
pub mod reactor;
#[cfg(test)]
mod scratch;
pub mod server;
pub mod sys;
pub mod tls;

/// Large buffers on cache lines, so the copies on the output path stay out of a slow case of `rep movsb`: see
/// [`sys::CacheLineAllocator`].
#[global_allocator]
static ALLOCATOR: sys::CacheLineAllocator = sys::CacheLineAllocator;
