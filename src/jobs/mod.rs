//! The job table: every job the server has started, its process, its output, and who may see it.
//!
//! The table is owned by the event loop and changed only through `&mut` methods; it knows nothing about
//! sockets or HTTP/2. The loop registers a job's pidfd and pipes with the reactor and calls back in here when
//! they are ready ([`JobTable::drain`], [`JobTable::reap`]) or when a stop's grace period runs out.

mod error;
mod ingest;
mod launch;
mod limits;
mod output;
mod spares;
mod spec;
mod table;

pub use error::JobError;
pub use ingest::{Drain, PIPE_READS_PER_TURN};
pub use limits::LimitPolicy;
pub use output::{OutputCursor, OutputLog, Span, Stream, RECORD_HEADER_LEN};
pub use spec::{JobSpec, SpawnLimits};
pub use table::{Caller, Containment, EndState, Job, JobId, JobKey, JobTable, JobTableConfig, PipeSide, StartedJob};
