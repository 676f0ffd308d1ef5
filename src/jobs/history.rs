//! Job history across server restarts: reading back, at startup, the jobs a previous server left in the state
//! directory, each from its record (`record.rs`) and its output segments (`spool/log.rs`).
//!
//! A job directory is read on its own: whatever is wrong with one (a damaged record, a missing segment) costs
//! that job, or that part of its output, with a warning naming the file and why, and never the others' history
//! or the server's start. A job that was running when its server died is recorded ended, lost with it
//! ([`EndReason::ServerLost`]): its processes died with the server (their parent-death signal), and what they
//! left (cgroups, working directories) is removed as any predecessor's leftovers are.

use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use super::record::{JobRecord, RECORD_FILE};
use super::spool::Spool;
use super::{EndReason, EndState, Job, JobId};

/// How the server that used the state directory before this one stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousServer {
    /// It stopped cleanly (or there was none): every job it ran has its end recorded.
    Stopped,
    /// It died (a crash, SIGKILL) with the machine still up: its jobs died with it, and everything it wrote
    /// is in the files (the kernel's page cache outlives the process).
    Crashed,
    /// The machine went down while it ran (power loss, a kernel crash): what the kernel had not yet written to
    /// disk is lost, and a segment written over an older one's file may show that file's older bytes.
    WentDownWithTheMachine,
}

/// The jobs a previous server left under `spool`'s directory, in no particular order, with their output
/// logs read back into `spool`. Directories that cannot be read as jobs are moved into `damaged` (a directory
/// beside the jobs', created if needed) with a warning; those of starts that never finished are removed.
pub(super) fn restore(spool: &mut Spool, previous: PreviousServer, damaged: &Path) -> io::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let jobs_dir = spool.jobs_dir().to_path_buf();
    let mut names: Vec<_> =
        fs::read_dir(&jobs_dir)?.map(|entry| entry.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let dir = jobs_dir.join(&name);
        let Some(text) = name.to_str().filter(|text| JobId::parse(text).is_some()) else {
            log::warn!("{} is not a job directory; left alone", dir.display());
            continue;
        };
        let record = match JobRecord::read(&dir) {
            Ok(Some(record)) if record.id.to_string() == text && !record.started => {
                // Launched, and never seen to start: nobody was told its id.
                log::info!("job directory {} is of a start that never finished; removed", dir.display());
                spool.dispose(&dir);
                continue;
            }
            Ok(Some(record)) if record.id.to_string() == text => record,
            Ok(Some(record)) => {
                set_aside(&dir, &dir.join(RECORD_FILE), damaged, &format!("it names job {}", record.id));
                continue;
            }
            Ok(None) => {
                // Made when a start began, before its record, or ahead of a start by the segment mover.
                log::info!(
                    "job directory {} has no record (a start that never finished, or made ahead for one); removed",
                    dir.display()
                );
                spool.dispose(&dir);
                continue;
            }
            Err(err) => {
                set_aside(&dir, &dir.join(RECORD_FILE), damaged, &err.to_string());
                continue;
            }
        };
        let trust_spares = previous != PreviousServer::WentDownWithTheMachine;
        let (output, problems) = match spool.recover_log(text, record.output_end, trust_spares) {
            Ok(recovered) => recovered,
            Err(err) => {
                set_aside(&dir, &dir, damaged, &format!("cannot read its output: {err}"));
                continue;
            }
        };
        for problem in problems {
            log::warn!("job {text}: {problem}; the rest of its output is kept");
        }
        let lost = record.end.is_none();
        let mut job = Job::restored(record, output);
        if lost {
            // Its processes died with their server; when exactly is unknown, so the loss is dated now.
            job.end = Some(EndState { status: None, reason: EndReason::ServerLost, at: SystemTime::now() });
            log::warn!(
                "job {} was running when the previous server stopped without ending it: recorded as lost",
                job.id
            );
            if let Err(err) = job.record().write(&dir) {
                log::warn!("cannot record job {} as lost in {}: {err}", job.id, dir.display());
            }
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// Moves the job directory `dir` aside into `damaged`, with a warning that `path` (the directory, or the file
/// in it at fault) could not be read and why; it is kept there for whoever wants to look, and counts against no
/// cap.
fn set_aside(dir: &Path, path: &Path, damaged: &Path, why: &str) {
    let target = damaged.join(dir.file_name().unwrap_or_default());
    let moved = std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(damaged)
        .and_then(|()| fs::rename(dir, &target));
    match moved {
        Ok(()) => log::warn!("{}: {why}; the job is skipped, its files moved to {}", path.display(), target.display()),
        Err(err) => {
            log::warn!("{}: {why}; the job is skipped (its files could not be moved aside: {err})", path.display())
        }
    }
}
