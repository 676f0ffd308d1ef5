//! A worker: one connection, looping over random actions until the deadline. Every byte it streams is checked
//! ([`StreamCheck`]); every answer that cannot be right is a failure; a job found evicted is counted, not failed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runnel::client::{CallError, Client, ResponseStream};
use runnel::grpc::{path, Code, Status};
use runnel::proto::{
    GetJobRequest, Job, JobState, ListJobsRequest, ListJobsResponse, OutputChunk, StartJobRequest, StopJobRequest,
    StreamOutputRequest, WaitJobRequest,
};

use crate::check::StreamCheck;
use crate::recipes::{Kind, Recipe};
use crate::shared::{Shared, Stats, IDENTITIES};

/// Every call carries a deadline (`grpc-timeout`), so no call can wait forever on a server that is alive.
const UNARY_TIMEOUT: Duration = Duration::from_secs(60);
/// WaitJob and follows outlast the longest job (40 s) by far, on a loaded machine.
const WAIT_TIMEOUT: Duration = Duration::from_secs(180);
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(300);
/// Job ids a worker remembers for WaitJob and GetJob on older jobs.
const RECENT_JOBS: usize = 32;
/// ListJobs pages one listing may take before it is a failure (200 jobs at 1 a page, plus those starting).
const MAX_PAGES: usize = 1000;

#[derive(Clone, Copy, Debug)]
enum Action {
    /// a. a short text job, followed from offset 0 to the end.
    ShortFollowed,
    /// b. a long job: a follower attaches at a random offset and detaches; another reads it all later.
    LongWithDetach,
    /// c. several MiB of binary written at once, followed from 0.
    BinaryBurst,
    /// d. StopJob on a running job with a grace period of 0–2 s; its output so far is checked.
    Stop,
    /// e. WaitJob, GetJob and a paged ListJobs.
    Inspect,
    /// f. a job nobody reads (it ends, and is evicted later).
    Unread,
    /// g. a follower of a flooding job that stops reading for 5–30 s.
    Stalled,
    /// h. a follower on a fresh connection that is closed mid-stream.
    Vanishing,
}

/// How often each action is picked, relative to the others: the long ones (b, g, h) less often, so the
/// machine's two cores are not all spent on floods.
const ACTIONS: [(Action, u32); 8] = [
    (Action::ShortFollowed, 3),
    (Action::LongWithDetach, 2),
    (Action::BinaryBurst, 2),
    (Action::Stop, 2),
    (Action::Inspect, 3),
    (Action::Unread, 2),
    (Action::Stalled, 1),
    (Action::Vanishing, 1),
];

/// How a follower reads.
#[derive(Clone, Copy)]
enum Mode {
    /// follow=true until the stream ends.
    ToEnd,
    /// follow=true, dropped (cancelled) after this long.
    DetachAfter(Duration),
    /// follow=true: one message, then nothing read for `pause`, then reading for `after`, then dropped.
    Stall { pause: Duration, after: Duration },
    /// follow=true: this many messages, then the caller closes the connection.
    Vanish(usize),
    /// follow=false: what exists (a stopped job whose output was `output_bytes`).
    Snapshot { output_bytes: u64 },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FollowEnd {
    Complete,
    Detached,
    Stalled,
    Vanished,
    Evicted,
    Failed,
}

enum Lookup {
    Found(Box<Job>),
    Evicted,
    Failed,
}

fn status_of(err: CallError) -> Status {
    match err {
        CallError::Status(status) => status,
        CallError::Interrupted => Status::new(Code::Unknown, "interrupted"),
    }
}

fn millis(rng: &mut StdRng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

pub struct Worker {
    index: usize,
    identity: &'static str,
    client: Client,
    rng: StdRng,
    shared: Arc<Shared>,
    recent: VecDeque<String>,
}

/// Runs worker `index` until the deadline; its randomness comes from `seed` alone.
pub fn run(index: usize, shared: Arc<Shared>, seed: u64) {
    let identity = IDENTITIES[index % IDENTITIES.len()];
    shared.set_status(index, "connecting".into());
    let client = match Client::connect(shared.settings_for(identity)) {
        Ok(client) => client,
        Err(status) => return shared.fail(format!("worker {index} ({identity}) cannot connect: {status:?}")),
    };
    let rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
    let mut worker = Worker { index, identity, client, rng, shared, recent: VecDeque::new() };
    while worker.shared.running() {
        let action = worker.pick_action();
        worker.shared.set_status(index, format!("{action:?}"));
        worker.act(action);
    }
    worker.shared.set_status(index, "done".into());
}

impl Worker {
    fn pick_action(&mut self) -> Action {
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        for (action, weight) in ACTIONS {
            if pick < weight {
                return action;
            }
            pick -= weight;
        }
        unreachable!("the weights add up to the total")
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::ShortFollowed => self.followed_from_start(Kind::Text),
            Action::LongWithDetach => self.long_with_detach(),
            Action::BinaryBurst => self.followed_from_start(Kind::Binary),
            Action::Stop => self.stop_running(),
            Action::Inspect => self.inspect(),
            Action::Unread => self.unread(),
            Action::Stalled => self.stalled(),
            Action::Vanishing => self.vanishing(),
        }
    }

    fn status(&self, doing: String) {
        self.shared.set_status(self.index, doing);
    }

    fn sleep(&mut self, range: std::ops::RangeInclusive<u64>) {
        std::thread::sleep(millis(&mut self.rng, range));
    }

    // --- the actions ---

    /// a and c: start a job of `kind` and follow it from offset 0 to the end; it must exit 0 with exactly its output.
    fn followed_from_start(&mut self, kind: Kind) {
        let recipe = self.shared.catalogue.pick(kind, &mut self.rng);
        let Some(job) = self.start_job(&recipe) else { return };
        self.follow(&job.id, &recipe, 0, Mode::ToEnd);
        self.wait_clean_exit(&job.id, &recipe);
    }

    /// b.
    fn long_with_detach(&mut self) {
        let recipe = self.shared.catalogue.pick(Kind::Bursts, &mut self.rng);
        let Some(job) = self.start_job(&recipe) else { return };
        self.sleep(0..=3000);
        let Lookup::Found(now) = self.get_job(&job.id) else { return };
        let offset = self.rng.random_range(0..=now.output_bytes);
        let detach = millis(&mut self.rng, 1000..=8000);
        self.follow(&job.id, &recipe, offset, Mode::DetachAfter(detach));
        self.sleep(0..=3000);
        self.follow(&job.id, &recipe, 0, Mode::ToEnd);
        self.wait_clean_exit(&job.id, &recipe);
    }

    /// d.
    fn stop_running(&mut self) {
        let recipe = self.shared.catalogue.pick(Kind::Bursts, &mut self.rng);
        let Some(job) = self.start_job(&recipe) else { return };
        self.sleep(0..=3000);
        let grace = millis(&mut self.rng, 0..=2000);
        let request = StopJobRequest { job_id: job.id.clone(), grace_period: Some(grace.try_into().unwrap()) };
        self.status(format!("Stop: StopJob {} grace {grace:?}", job.id));
        let stopped: Job = match self.unary(path::STOP_JOB, &request, UNARY_TIMEOUT) {
            Ok(stopped) => stopped,
            Err(status) => return self.unexpected(&format!("StopJob {}", job.id), &status),
        };
        Stats::add(&self.shared.stats.stops, 1);
        self.shared.note_end(&stopped);
        if !self.check_ended("StopJob", &stopped) {
            return;
        }
        let Lookup::Found(waited) = self.wait_job(&job.id) else { return };
        if (waited.state, waited.output_bytes) != (stopped.state, stopped.output_bytes) {
            self.shared.fail(format!(
                "job {} ({}): StopJob answered {:?} with {} output bytes, a WaitJob after it {:?} with {}",
                job.id,
                recipe.name,
                stopped.state(),
                stopped.output_bytes,
                waited.state(),
                waited.output_bytes
            ));
        }
        if waited.state() == JobState::Exited {
            // It ended on its own before the stop: all of it must be there.
            self.check_clean_exit(&waited, &recipe);
        }
        self.follow(&job.id, &recipe, 0, Mode::Snapshot { output_bytes: waited.output_bytes });
    }

    /// e.
    fn inspect(&mut self) {
        if let Some(id) = self.recent_job() {
            if let Lookup::Found(job) = self.wait_job(&id) {
                self.check_ended("WaitJob", &job);
            }
        }
        if let Some(id) = self.recent_job() {
            self.get_job(&id);
        }
        self.list_all();
    }

    /// f.
    fn unread(&mut self) {
        let kind = if self.rng.random_bool(0.5) { Kind::Text } else { Kind::Binary };
        let recipe = self.shared.catalogue.pick(kind, &mut self.rng);
        self.start_job(&recipe);
    }

    /// g. The follower stops reading for 5–30 s while the job floods past `--max-output-bytes`; then reads on for
    /// up to 2 s (the jump over what retention discarded is checked), and is dropped. The flood is stopped.
    fn stalled(&mut self) {
        let recipe = self.shared.catalogue.pick(Kind::Flood, &mut self.rng);
        let Some(job) = self.start_job(&recipe) else { return };
        let (pause, after) = (millis(&mut self.rng, 5000..=30000), millis(&mut self.rng, 0..=2000));
        self.follow(&job.id, &recipe, 0, Mode::Stall { pause, after });
        let request = StopJobRequest { job_id: job.id.clone(), grace_period: Some(Duration::ZERO.try_into().unwrap()) };
        match self.unary::<_, Job>(path::STOP_JOB, &request, UNARY_TIMEOUT) {
            Ok(stopped) => {
                Stats::add(&self.shared.stats.stops, 1);
                self.shared.note_end(&stopped);
                self.check_ended("StopJob", &stopped);
            }
            Err(status) if status.code == Code::NotFound => Stats::add(&self.shared.stats.lookups_evicted, 1),
            Err(status) => self.unexpected(&format!("StopJob {}", job.id), &status),
        }
    }

    /// h. A second connection follows the job and is closed mid-stream without ending the call; this
    /// connection then reads the whole output.
    fn vanishing(&mut self) {
        let recipe = self.shared.catalogue.pick(Kind::Bursts, &mut self.rng);
        let Some(job) = self.start_job(&recipe) else { return };
        let mut fresh = match Client::connect(self.shared.settings_for(self.identity)) {
            Ok(client) => client,
            Err(status) => return self.unexpected("connect (vanishing client)", &status),
        };
        let messages = self.rng.random_range(1..=3);
        let end = follow(&mut fresh, &self.shared, self.index, &job.id, &recipe, 0, Mode::Vanish(messages));
        // The stream was dropped inside `follow` with nothing sent for it; dropping the client closes the socket.
        drop(fresh);
        count_follow(&self.shared, end);
        self.follow(&job.id, &recipe, 0, Mode::ToEnd);
        self.wait_clean_exit(&job.id, &recipe);
    }

    // --- calls ---

    fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        self.client.unary(path, request, Some(timeout)).map_err(status_of)
    }

    /// A failure no eviction explains. A lost connection is replaced, so the worker goes on.
    fn unexpected(&mut self, what: &str, status: &Status) {
        if self.shared.aborted() {
            return; // the server is gone, which is failure enough
        }
        self.shared
            .fail(format!("worker {} ({}): {what}: {:?}: {}", self.index, self.identity, status.code, status.message));
        if status.code == Code::Unavailable && !self.shared.aborted() {
            if let Ok(client) = Client::connect(self.shared.settings_for(self.identity)) {
                self.client = client;
            }
        }
    }

    fn start_job(&mut self, recipe: &Recipe) -> Option<Job> {
        self.status(format!("StartJob {}", recipe.name));
        let request =
            StartJobRequest { command: "/bin/sh".into(), args: recipe.args(&self.shared.marker), ..Default::default() };
        match self.unary::<_, Job>(path::START_JOB, &request, UNARY_TIMEOUT) {
            Ok(job) => {
                self.shared.note_started(&job);
                if self.recent.len() == RECENT_JOBS {
                    self.recent.pop_front();
                }
                self.recent.push_back(job.id.clone());
                Some(job)
            }
            Err(status) => {
                self.unexpected(&format!("StartJob {}", recipe.name), &status);
                None
            }
        }
    }

    fn recent_job(&mut self) -> Option<String> {
        (!self.recent.is_empty()).then(|| self.recent[self.rng.random_range(0..self.recent.len())].clone())
    }

    fn lookup(&mut self, what: &str, path: &str, id: &str, timeout: Duration) -> Lookup {
        self.status(format!("{what} {id}"));
        let result = match path {
            path::WAIT_JOB => self.unary::<_, Job>(path, &WaitJobRequest { job_id: id.into() }, timeout),
            _ => self.unary::<_, Job>(path, &GetJobRequest { job_id: id.into() }, timeout),
        };
        match result {
            Ok(job) => {
                self.shared.note_end(&job);
                Lookup::Found(Box::new(job))
            }
            Err(status) if status.code == Code::NotFound => {
                Stats::add(&self.shared.stats.lookups_evicted, 1);
                Lookup::Evicted
            }
            Err(status) => {
                self.unexpected(&format!("{what} {id}"), &status);
                Lookup::Failed
            }
        }
    }

    fn get_job(&mut self, id: &str) -> Lookup {
        self.lookup("GetJob", path::GET_JOB, id, UNARY_TIMEOUT)
    }

    fn wait_job(&mut self, id: &str) -> Lookup {
        Stats::add(&self.shared.stats.waits, 1);
        self.lookup("WaitJob", path::WAIT_JOB, id, WAIT_TIMEOUT)
    }

    /// An answer that must show an ended job (StopJob and WaitJob return once it ended).
    fn check_ended(&self, call: &str, job: &Job) -> bool {
        let ended = matches!(job.state(), JobState::Exited | JobState::Killed) && job.ended_at.is_some();
        if !ended {
            self.shared.fail(format!(
                "job {}: {call} answered state {:?} (ended_at {:?}), not an ended job",
                job.id,
                job.state(),
                job.ended_at
            ));
        }
        ended
    }

    /// WaitJob on a job nobody stopped: it must have exited 0 with exactly the recipe's output.
    fn wait_clean_exit(&mut self, id: &str, recipe: &Recipe) {
        if let Lookup::Found(job) = self.wait_job(id) {
            self.check_clean_exit(&job, recipe);
        }
    }

    fn check_clean_exit(&self, job: &Job, recipe: &Recipe) {
        let total = recipe.expected.total();
        if job.state() != JobState::Exited || job.exit_code != Some(0) || job.output_bytes != total {
            self.shared.fail(format!(
                "job {} ({}): ended {:?} (exit code {:?}, signal {:?}, end reason {:?}) with {} output bytes; \
                 expected EXITED 0 with {total}",
                job.id,
                recipe.name,
                job.state(),
                job.exit_code,
                job.signal,
                job.end_reason(),
                job.output_bytes
            ));
        }
    }

    /// Every page of a ListJobs, with a random page size and state filter: no job twice, none that is not the
    /// caller's (unless admin), none in a state not asked for.
    fn list_all(&mut self) {
        let filters: [&[JobState]; 3] = [&[], &[JobState::Running], &[JobState::Exited, JobState::Killed]];
        let states = filters[self.rng.random_range(0..filters.len())];
        let page_size = self.rng.random_range(1..=100);
        let mut seen = std::collections::HashSet::new();
        let mut token = String::new();
        self.status(format!("ListJobs page_size {page_size} states {states:?}"));
        Stats::add(&self.shared.stats.lists, 1);
        for _ in 0..MAX_PAGES {
            let request =
                ListJobsRequest { states: states.iter().map(|s| *s as i32).collect(), page_size, page_token: token };
            let page: ListJobsResponse = match self.unary(path::LIST_JOBS, &request, UNARY_TIMEOUT) {
                Ok(page) => page,
                Err(status) => return self.unexpected("ListJobs", &status),
            };
            Stats::add(&self.shared.stats.list_pages, 1);
            if page.jobs.len() > page_size as usize {
                return self.shared.fail(format!("ListJobs: {} jobs in a page of {page_size}", page.jobs.len()));
            }
            for job in &page.jobs {
                self.shared.note_end(job);
                let wrong = if !seen.insert(job.id.clone()) {
                    Some("listed twice")
                } else if self.identity != "admin" && job.owner != self.identity {
                    Some("another identity's job")
                } else if !states.is_empty() && !states.contains(&job.state()) {
                    Some("a state not asked for")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    return self.shared.fail(format!(
                        "ListJobs (page_size {page_size}, states {states:?}) as {}: job {} (owner {}, {:?}): {wrong}",
                        self.identity,
                        job.id,
                        job.owner,
                        job.state()
                    ));
                }
            }
            if page.next_page_token.is_empty() {
                return;
            }
            token = page.next_page_token;
        }
        self.shared.fail(format!("ListJobs (page_size {page_size}): still a next page after {MAX_PAGES} pages"));
    }

    fn follow(&mut self, id: &str, recipe: &Arc<Recipe>, offset: u64, mode: Mode) {
        let end = follow(&mut self.client, &self.shared, self.index, id, recipe, offset, mode);
        count_follow(&self.shared, end);
        if matches!(mode, Mode::Snapshot { .. }) && end == FollowEnd::Complete {
            Stats::add(&self.shared.stats.stopped_reads, 1);
        }
    }
}

fn count_follow(shared: &Shared, end: FollowEnd) {
    let stats = &shared.stats;
    let counter = match end {
        FollowEnd::Complete => &stats.followers_complete,
        FollowEnd::Detached => &stats.followers_detached,
        FollowEnd::Stalled => &stats.followers_stalled,
        FollowEnd::Vanished => &stats.followers_vanished,
        FollowEnd::Evicted => &stats.followers_evicted,
        FollowEnd::Failed => return,
    };
    Stats::add(counter, 1);
}

/// One follower of `id` from `offset` on `client`, checked chunk by chunk; the stream is dropped (the call
/// cancelled) when this returns.
fn follow(
    client: &mut Client,
    shared: &Shared,
    worker: usize,
    id: &str,
    recipe: &Arc<Recipe>,
    offset: u64,
    mode: Mode,
) -> FollowEnd {
    shared.set_status(worker, format!("StreamOutput {id} ({}) from {offset}", recipe.name));
    let mut check = StreamCheck::new(id, Arc::clone(recipe), offset);
    let request = StreamOutputRequest { job_id: id.into(), offset, follow: !matches!(mode, Mode::Snapshot { .. }) };
    let end = match client.start_call(path::STREAM_OUTPUT, &request, Some(FOLLOW_TIMEOUT)) {
        Ok(mut stream) => read_checked(client, shared, &mut stream, &mut check, mode),
        Err(err) => stream_error(client, shared, &check, status_of(err)),
    };
    Stats::add(&shared.stats.bytes_streamed, check.streamed);
    Stats::add(&shared.stats.bytes_checked, check.checked);
    Stats::add(&shared.stats.gaps, check.gaps);
    end
}

fn read_checked(
    client: &mut Client,
    shared: &Shared,
    stream: &mut ResponseStream,
    check: &mut StreamCheck,
    mode: Mode,
) -> FollowEnd {
    let mut begun = Instant::now();
    let mut messages = 0;
    let mut stalled = false;
    loop {
        match mode {
            Mode::DetachAfter(after) if begun.elapsed() >= after => return FollowEnd::Detached,
            Mode::Vanish(count) if messages == count => return FollowEnd::Vanished,
            Mode::Stall { pause, .. } if messages == 1 && !stalled => {
                // Nothing reads this connection meanwhile: the server's sends to it back up.
                std::thread::sleep(pause);
                (stalled, begun) = (true, Instant::now());
            }
            Mode::Stall { after, .. } if stalled && begun.elapsed() >= after => return FollowEnd::Stalled,
            _ => {}
        }
        let chunk = match client.next_message::<OutputChunk>(stream) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return stream_ended(client, shared, check, mode),
            Err(err) => return stream_error(client, shared, check, status_of(err)),
        };
        messages += 1;
        match check.chunk(&chunk) {
            Ok(None) => {}
            Ok(Some(gap_start)) => {
                if let Err(end) = confirm_discarded(client, shared, check, gap_start, chunk.offset) {
                    return end;
                }
            }
            Err(mismatch) => {
                shared.fail(mismatch);
                return FollowEnd::Failed;
            }
        }
    }
}

/// The stream ended with OK: for a follow, the job ended and everything from the offset on arrived, or was
/// discarded by retention (a follower jumps to `output_start`, so a stream ends short only if the whole rest of
/// the output was discarded: then `output_start` is at the end).
fn stream_ended(client: &mut Client, shared: &Shared, check: &mut StreamCheck, mode: Mode) -> FollowEnd {
    let output_bytes = match mode {
        Mode::Snapshot { output_bytes } => output_bytes,
        _ => check.expected_total(),
    };
    let end = check.end_offset();
    if end < output_bytes {
        let discarded = |job: &Job| job.output_start >= output_bytes;
        let what = format!("the stream ended at offset {end} of the job's {output_bytes} output bytes");
        if let Err(end) = confirm_retention(client, shared, check, &what, discarded) {
            return end;
        }
        check.skip_discarded_tail(output_bytes);
    }
    let result = match mode {
        Mode::Snapshot { output_bytes } => check.finish_at(output_bytes),
        _ => check.finish_complete(),
    };
    match result {
        Ok(()) => FollowEnd::Complete,
        Err(message) => {
            shared.fail(message);
            FollowEnd::Failed
        }
    }
}

/// A follow that ended with an error: NOT_FOUND means the job was evicted (acceptable); anything else fails.
fn stream_error(client: &mut Client, shared: &Shared, check: &StreamCheck, status: Status) -> FollowEnd {
    if status.code == Code::NotFound {
        return FollowEnd::Evicted;
    }
    if !shared.aborted() {
        let diagnosis = match status.code {
            Code::DeadlineExceeded => diagnose_stuck_follow(client, shared, check),
            _ => String::new(),
        };
        shared.fail(format!(
            "{}: StreamOutput ended with {:?}: {}; {}{diagnosis}",
            check.describe(),
            status.code,
            status.message,
            check.progress()
        ));
    }
    FollowEnd::Failed
}

/// Why a follow may have outlived its deadline, as far as a client can tell: whether its own connection still
/// answers, what the job says of itself, and whether the output past where the follow stopped can be read on
/// a fresh connection.
fn diagnose_stuck_follow(client: &mut Client, shared: &Shared, check: &StreamCheck) -> String {
    const WITHIN: Duration = Duration::from_secs(10);
    let get = GetJobRequest { job_id: check.job_id().into() };
    let describe_job = |job: Result<Job, CallError>| match job {
        Ok(job) => format!("{:?}, output {}..{} bytes", job.state(), job.output_start, job.output_bytes),
        Err(err) => format!("{err:?}"),
    };
    let on_own = describe_job(client.unary(path::GET_JOB, &get, Some(WITHIN)));
    let mut fresh = match Client::connect(shared.settings_for("admin")) {
        Ok(fresh) => fresh,
        Err(status) => {
            return format!("; on its own connection GetJob: {on_own}; a fresh connection failed: {status:?}")
        }
    };
    let on_fresh = describe_job(fresh.unary(path::GET_JOB, &get, Some(WITHIN)));
    let request = StreamOutputRequest { job_id: check.job_id().into(), offset: check.end_offset(), follow: false };
    let mut rest = 0;
    let read = fresh.start_call(path::STREAM_OUTPUT, &request, Some(WITHIN)).and_then(|mut stream| {
        while let Some(chunk) = fresh.next_message::<OutputChunk>(&mut stream)? {
            rest += chunk.data.len();
        }
        Ok(())
    });
    format!(
        "; on its own connection GetJob: {on_own}; on a fresh one: {on_fresh}, and a snapshot from offset {} \
         read {rest} bytes ({})",
        check.end_offset(),
        match read {
            Ok(()) => "to its end".to_string(),
            Err(err) => format!("{err:?}"),
        }
    )
}

/// Offsets `gap_start..offset` never arrived: right only if retention discarded them, which moves the job's
/// `output_start` past them (it never moves back, so asking now is enough).
fn confirm_discarded(
    client: &mut Client,
    shared: &Shared,
    check: &StreamCheck,
    gap_start: u64,
    offset: u64,
) -> Result<(), FollowEnd> {
    let what = format!("offsets {gap_start}..{offset} were skipped");
    confirm_retention(client, shared, check, &what, |job| job.output_start > gap_start)
}

/// Asks for the job and checks that `discarded` holds for it: `Err` with how the follow ends if it does not
/// (a failure), or if the job is gone (evicted).
fn confirm_retention(
    client: &mut Client,
    shared: &Shared,
    check: &StreamCheck,
    what: &str,
    discarded: impl Fn(&Job) -> bool,
) -> Result<(), FollowEnd> {
    let request = GetJobRequest { job_id: check.job_id().into() };
    match client.unary::<_, Job>(path::GET_JOB, &request, Some(UNARY_TIMEOUT)).map_err(status_of) {
        Ok(job) if discarded(&job) => Ok(()),
        Ok(job) => {
            shared.fail(format!(
                "{}: {what}, but retention did not discard them: the job's output_start is {}, output_bytes {}",
                check.describe(),
                job.output_start,
                job.output_bytes
            ));
            Err(FollowEnd::Failed)
        }
        Err(status) if status.code == Code::NotFound => Err(FollowEnd::Evicted),
        Err(status) => {
            shared.fail(format!("{}: GetJob after {what}: {:?}: {}", check.describe(), status.code, status.message));
            Err(FollowEnd::Failed)
        }
    }
}
