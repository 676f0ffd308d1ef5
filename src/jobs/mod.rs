//! The job domain: every job the server has started, its process, its output, and who may see it.
//!
//! It knows nothing of sockets, HTTP/2 or the API's protobuf (its records on disk have a schema of their own,
//! `record.rs`): requests arrive as domain values ([`StartRequest`],
//! [`Caller`], job id text), answers leave as [`Job`]s, and failures as [`JobError`]s, which the service turns
//! into wire messages and gRPC statuses. The table is owned by the event loop and changed only through `&mut`
//! methods. The loop registers a job's pidfd and pipes with the reactor and calls back in here when they are
//! ready ([`JobTable::drain`], with the share of the turn's output budget it chooses; [`JobTable::reap`];
//! [`JobTable::settle_start`]) or when a timer runs out ([`JobTable::kill`], [`JobTable::start_overdue`]).

mod caller;
mod counters;
mod error;
mod history;
mod id;
pub mod janitor;
mod job;
mod launch;
mod limits;
mod record;
mod spec;
mod spool;
mod start;
mod table;

pub use caller::Caller;
pub use counters::{JobCensus, JobCounters};
pub use error::{clip, JobError, QUOTE_LIMIT};
pub use history::PreviousServer;
pub use id::{JobId, JobKey};
pub use job::{EndReason, EndState, Job, JobState};
pub use launch::START_TIMEOUT;
pub use limits::{LimitField, LimitPolicy, LimitUnit, LIMIT_FIELDS};
pub use spec::{JobSpec, StartRequest};
pub use spool::mover::{main as segment_mover_main, SEGMENT_MOVER_COMMAND};
pub use spool::writer::{main as spool_writer_main, SPOOL_WRITER_COMMAND};
pub use spool::{Drain, Ingested, OutputCursor, OutputLog, Span, Stream, PIPE_CAPACITY};
pub use table::{Containment, JobTable, JobTableConfig, StartedJob, JOB_DIRS_AHEAD};

/// The spool itself, for the fuzz target that holds it against a model (`fuzz/fuzz_targets/spool.rs`), and a
/// job's record, for the one that reads a previous server's files back (`fuzz/fuzz_targets/history.rs`).
#[cfg(fuzzing)]
pub use record::JobRecord;
#[cfg(fuzzing)]
pub use spool::Spool;
