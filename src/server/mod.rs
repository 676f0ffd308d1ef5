//! The server: one thread, one mio loop, owning the listener, every connection and call, and the job table.
//!
//! Each turn of the loop waits for readiness (sockets, job pipes and pidfds, the signalfd) or the next timer,
//! hands each event to its owner, then polls every task that was woken until none is left. Nothing here
//! blocks except `epoll_wait`, and nothing is shared: handlers get `&mut` access to what they need.

mod admission;
mod call;
mod connection;
mod containment;
mod follower;
mod method;
mod metrics;
mod notify;
pub mod reflection;
mod rejections;
pub mod scrape;
mod service;
mod source;
mod state_dir;
mod turn;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll as MioPoll};

use self::admission::{Admission, ClientCaps};
use self::connection::{Connection, ConnectionSettings, ConnectionState};
pub use self::containment::ContainmentConfig;
use self::metrics::{Metrics, Observed};
use self::notify::ServiceManager;
use self::rejections::{Rejection, RejectionLog};
use self::scrape::MetricsEndpoint;
use self::service::{Effect, ServiceContext};
use self::source::Source;
use self::state_dir::StateDir;
use self::turn::{Part, SlowTurnLog, Step, TurnClock};
use self::wire::CallError;
use crate::jobs::{Drain, EndReason, JobKey, JobTable, JobTableConfig, StartedJob, Stream, START_TIMEOUT};
use crate::reactor::{TaskId, Timers, WakeQueue};
use crate::sys;
use crate::tls::{self, KeySource, TlsError};

/// Everything `runnel server` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where to serve Prometheus metrics over plain HTTP (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: KeySource,
    /// Which client certificates are accepted (`--client-ca`, `--crl`, `--client-cert-pin`).
    pub clients: tls::ClientTrust,
    pub admins: Vec<String>,
    pub state_dir: PathBuf,
    /// `--ephemeral`: the state directory, job history and all, is removed at shutdown.
    pub ephemeral: bool,
    /// Established connections at once (`--max-connections`).
    pub max_connections: usize,
    /// Established connections at once per identity (`--max-connections-per-client`).
    pub max_connections_per_client: usize,
    /// Calls in flight at once per identity, across its connections (`--max-calls-per-client`).
    pub max_calls_per_client: usize,
    /// StreamOutput calls in flight at once per identity (`--max-followers-per-client`).
    pub max_followers_per_client: usize,
    pub max_jobs: usize,
    pub max_running_per_client: usize,
    /// Most bytes of a start request a job keeps (`--max-job-request`).
    pub max_request_bytes: usize,
    pub max_output_bytes: u64,
    pub max_output_total: u64,
    pub stop_grace: Duration,
    pub shutdown_grace: Duration,
    pub containment: ContainmentConfig,
}

/// Why the server could not start (or stopped abnormally).
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    Tls(TlsError),
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        address: SocketAddr,
        source: io::Error,
    },
    StateDir(String),
    /// A `--require-*` containment flag cannot be met on this host, or a containment flag is wrong.
    Containment(String),
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The spool writer died: output it had taken from jobs may be lost, and no more can be written.
    SpoolWriterGone(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Tls(err) => err.fmt(f),
            ServerError::Bind { flag, address, source } => write!(f, "cannot listen on {address} ({flag}): {source}"),
            ServerError::StateDir(message) | ServerError::Containment(message) => f.write_str(message),
            ServerError::Io { what, source } => write!(f, "{what}: {source}"),
            ServerError::SpoolWriterGone(why) => {
                write!(f, "{why}; job output can no longer be written, so the server stops")
            }
        }
    }
}

impl From<TlsError> for ServerError {
    fn from(err: TlsError) -> Self {
        ServerError::Tls(err)
    }
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Limits that keep one client from holding the server's resources (see `docs/wire.md`).
mod limits {
    use std::time::Duration;
    /// Connections still in the TLS or HTTP/2 handshake at once (slowloris on the handshake); past it a new
    /// connection closes the oldest unfinished one of the busiest address (see `server::admission`).
    pub const MAX_HANDSHAKING: usize = 128;
    /// Time a connection has to finish both handshakes; a prompt client needs a few round trips.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// A connection with no call for this long is closed with GOAWAY.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Concurrent calls per connection (Rapid Reset: h2 advertises no limit by default).
    pub const MAX_CONCURRENT_STREAMS: u32 = 256;
    /// Request header block limit (CONTINUATION flood, HPACK bomb); h2's default is 16 MiB.
    pub const MAX_HEADER_LIST: u32 = 16 * 1024;
    /// HPACK dynamic table size.
    pub const HEADER_TABLE: u32 = 4096;
    /// Per-stream receive window: requests are small; 1 MiB lets a 4 MiB request arrive in a few round trips.
    pub const STREAM_WINDOW: u32 = 1024 * 1024;
    /// Bytes of unfinished requests the calls of one connection may hold before the server stops opening the
    /// client's flow-control windows (see `call::RequestBudget`): two of the largest requests.
    pub const REQUEST_BYTES_PER_CONNECTION: usize = 2 * crate::grpc::MAX_REQUEST_MESSAGE;
    /// What h2 may queue per stream ahead of the socket (h2's own default, 400 KiB, stated here as a bound a
    /// follower holds; a follower builds no message larger than the capacity h2 grants it).
    pub const SEND_BUFFER_PER_STREAM: usize = 400 * 1024;
    /// rustls' outgoing buffer per connection (its default is 64 KiB): larger means fewer, larger socket writes
    /// when streaming output. h2's own per-stream send buffer bounds what is queued in front of it.
    pub const TLS_SEND_BUFFER: usize = 512 * 1024;
    /// How long a rendered metrics page is served again instead of rendering a new one.
    pub const METRICS_PAGE_FRESH: Duration = Duration::from_secs(1);
    /// Reflection requests one call answers in one poll before every other woken task is polled.
    pub const REFLECTION_ANSWERS_PER_POLL: usize = 8;
    /// Largest reflection request: a file or symbol name.
    pub const MAX_REFLECTION_REQUEST: usize = 64 * 1024;
    /// Once every job has ended at shutdown, time left for followers to receive the last output.
    pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
    /// After a connection closes, how long until the freed memory goes back to the kernel (`sys::give_back_freed_memory`);
    /// one trim covers every connection that closed meanwhile.
    pub const TRIM_AFTER: Duration = Duration::from_secs(3);
    /// How soon files that found the janitor's pipe full are offered to it again.
    pub const REMOVAL_RETRY: Duration = Duration::from_millis(100);
    /// Tasks polled in one turn before the loop checks for I/O again, so a busy task cannot starve the rest.
    pub const TASK_ROUNDS_PER_TURN: usize = 64;
    /// Job output moved from pipes into the spool in one turn, shared round-robin among the pipes that have
    /// some; a job writing faster than its share waits in `write` on its own pipe. Small enough that a turn
    /// stays short under any number of flooding jobs, large enough that one job with a follower streams at
    /// full speed (see docs/performance.md).
    pub const OUTPUT_BYTES_PER_TURN: usize = 2 << 20;
    /// The most one pipe gets per turn: a full pipe.
    pub const OUTPUT_BYTES_PER_PIPE: usize = crate::jobs::PIPE_CAPACITY;
    /// Output copied between two looks for calls that arrived meanwhile (see `Server::ingest_output`): about a
    /// third of a millisecond of copying on the development VM.
    pub const OUTPUT_BYTES_PER_LOOK: usize = 256 << 10;
}

/// Timer events. Each is checked when it fires: a job may have ended, a call finished, a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerEvent {
    /// A stop's grace period is over: SIGKILL the job's process group.
    KillJob(JobKey),
    /// A job must have reported that its command started by now.
    StartDeadline(JobKey),
    /// A call's `grpc-timeout` expired.
    CallDeadline(u64, u64),
    /// A connection must have finished its handshakes by now.
    HandshakeDeadline(u64),
    /// Check whether a connection has been idle too long.
    IdleCheck(u64),
    /// Connections closed a while ago: give the memory they freed back to the kernel.
    TrimMemory,
    /// Files to remove waited for room in the janitor's pipe: hand them over now.
    RetryRemovals,
    /// Shutdown: stop waiting for followers and send GOAWAY on every connection.
    FollowersDrainOver,
    /// Shutdown: stop waiting for connections to close after GOAWAY and drop them.
    ConnectionsCloseOver,
    /// A metrics exchange's time is up: drop it if it is still open.
    MetricsExchangeOver(u64),
}

/// When to look at a connection's idleness again, or `None` to close it now. At most one check per
/// `IDLE_TIMEOUT`: a connection with a long call (a follower of a silent job) is looked at again a whole period
/// later, so no connection is ever polled.
fn next_idle_check(now: Instant, last_active: Instant, has_calls: bool) -> Option<Instant> {
    let idle_until = last_active + limits::IDLE_TIMEOUT;
    if has_calls {
        Some(now + limits::IDLE_TIMEOUT)
    } else if now >= idle_until {
        None
    } else {
        Some(idle_until)
    }
}

/// Where shutdown stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// A signal came: jobs are being stopped.
    StoppingJobs,
    /// Every job has ended: followers get the last output, then connections close.
    Draining,
    /// Every connection is closing; the loop ends when they are gone.
    Closing,
}

/// A queue of job pipes, each at most once: readiness is edge-triggered, so a pipe is queued when output
/// arrives and leaves the queue once it was found empty.
#[derive(Default)]
struct ReadyPipes {
    order: VecDeque<(JobKey, Stream)>,
    queued: HashSet<(JobKey, Stream)>,
}

impl ReadyPipes {
    fn push(&mut self, key: JobKey, stream: Stream) {
        if self.queued.insert((key, stream)) {
            self.order.push_back((key, stream));
        }
    }

    fn pop(&mut self) -> Option<(JobKey, Stream)> {
        let pipe = self.order.pop_front()?;
        self.queued.remove(&pipe);
        Some(pipe)
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

struct Server {
    poll: MioPoll,
    listener: Option<TcpListener>,
    signals: OwnedFd,
    tls: Arc<rustls::ServerConfig>,
    settings: ConnectionSettings,
    connections: HashMap<u64, Connection>,
    admission: Admission,
    /// Lines about connections turned away, rate-limited.
    rejections: RejectionLog,
    next_connection: u64,
    queue: Arc<WakeQueue>,
    timers: Timers<TimerEvent>,
    jobs: JobTable,
    /// Job pipes that may hold output, in the order they get their next share of a turn's output budget.
    ready_pipes: ReadyPipes,
    /// Job pipes with output the spool writer has no room for yet: ready again when it confirms writes.
    pipes_waiting_for_writer: ReadyPipes,
    /// What became ready while the turn copied output, other than job output: the next turn starts with it,
    /// without waiting (see [`Server::ingest_output`]).
    seen_during_ingest: Vec<Source>,
    /// What calls asked of the loop while they were polled (see [`Effect`]).
    effects: Vec<Effect>,
    /// A [`TimerEvent::TrimMemory`] is pending.
    trim_scheduled: bool,
    /// A [`TimerEvent::RetryRemovals`] is pending.
    removal_retry_scheduled: bool,
    lifecycle: Lifecycle,
    metrics: Metrics,
    /// Slow turns described in the log, rate-limited.
    slow_turns: SlowTurnLog,
    /// `--metrics-listen`'s listener and its exchanges.
    metrics_endpoint: Option<MetricsEndpoint>,
    /// The last metrics page and when it was rendered.
    metrics_page: Option<(Instant, String)>,
    /// systemd (`Type=notify`), told when the server is ready and when it stops.
    service_manager: ServiceManager,
    config: ServerConfig,
}

/// Runs the server until a shutdown signal has been handled. Returns after every job ended and the state
/// directory was removed.
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    sys::ensure_standard_fds().map_err(io_error("cannot check standard descriptors"))?;
    // Before any helper is started, so none inherits $NOTIFY_SOCKET.
    let service_manager = ServiceManager::from_environment();
    sys::retain_freed_memory();
    let tls = tls::server_config(&config.cert, &config.key, &config.clients)?;
    let signals = sys::signalfd(&sys::SHUTDOWN_SIGNALS).map_err(io_error("cannot set up signal handling"))?;
    let (mut state_dir, previous_server) = StateDir::acquire(&config.state_dir, config.ephemeral)?;
    let prepared = containment::prepare(&config.containment).and_then(|containment| {
        containment::check_reachable_by_jobs(&containment, state_dir.path())?;
        Ok(containment)
    });
    let containment = match prepared {
        Ok(containment) => containment,
        Err(err) => {
            state_dir.abandon();
            return Err(err);
        }
    };
    let mut jobs = JobTable::new(
        JobTableConfig {
            state_dir: state_dir.path().to_path_buf(),
            max_jobs: config.max_jobs,
            max_running_per_client: config.max_running_per_client,
            max_request_bytes: config.max_request_bytes,
            max_output_bytes: config.max_output_bytes,
            max_output_total: config.max_output_total,
            // The running executable, even if its file was replaced or removed since.
            helper_executable: Some(PathBuf::from("/proc/self/exe")),
            state_dir_lock: state_dir.lock_for_helpers(),
            history: (!config.ephemeral).then_some(previous_server),
        },
        containment,
    )
    .map_err(io_error("cannot prepare the job directories"))?;
    state_dir.history_restored().map_err(io_error("cannot write the state directory's lock file"))?;

    let mut listener = TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
        flag: "--listen",
        address: config.listen,
        source,
    })?;
    if config.listen.ip().to_canonical().is_loopback() {
        // Every connection stays on this machine: nothing to pace for (`sys::send_unpaced`). A listener on other
        // addresses keeps the system's congestion control, chosen for the networks its clients come over.
        if let Err(err) = sys::send_unpaced(listener.as_raw_fd()) {
            log::debug!("connections keep the system's congestion control: {err}");
        }
    }
    let poll = MioPoll::new().map_err(io_error("cannot create the event loop"))?;
    poll.registry()
        .register(&mut listener, Source::Listener.token(), Interest::READABLE)
        .map_err(io_error("cannot watch the listener"))?;
    poll.registry()
        .register(&mut SourceFd(&signals.as_raw_fd()), Source::Signals.token(), Interest::READABLE)
        .map_err(io_error("cannot watch signals"))?;
    if let Some(socket) = jobs.spool_writer_socket() {
        poll.registry()
            .register(&mut SourceFd(&socket), Source::SpoolWriter.token(), Interest::READABLE)
            .map_err(io_error("cannot watch the spool writer"))?;
    }
    if let Some(socket) = jobs.segment_mover_socket() {
        poll.registry()
            .register(&mut SourceFd(&socket), Source::SegmentMover.token(), Interest::READABLE)
            .map_err(io_error("cannot watch the segment mover"))?;
    }
    let address = listener.local_addr().map_err(io_error("cannot read the listening address"))?;
    let metrics_endpoint = match config.metrics_listen {
        None => None,
        Some(address) => {
            let endpoint = MetricsEndpoint::bind(address, poll.registry()).map_err(|source| ServerError::Bind {
                flag: "--metrics-listen",
                address,
                source,
            })?;
            let bound = endpoint.local_addr().map_err(io_error("cannot read the metrics address"))?;
            log::info!(target: "runnel::ready", "metrics served at http://{bound}/metrics");
            Some(endpoint)
        }
    };
    // The one line scripts and tests wait for (`grep -o 'listening on [^ "]*'`), in the log's own format.
    log::info!(target: "runnel::ready", "runnel server listening on {address}");
    service_manager.notify("READY=1");

    let mut h2 = h2::server::Builder::new();
    h2.max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(limits::MAX_HEADER_LIST)
        .header_table_size(limits::HEADER_TABLE)
        .initial_window_size(limits::STREAM_WINDOW)
        .initial_connection_window_size(limits::STREAM_WINDOW * 4)
        .max_send_buffer_size(limits::SEND_BUFFER_PER_STREAM);
    let mut server = Server {
        poll,
        listener: Some(listener),
        signals,
        tls,
        settings: ConnectionSettings { h2, admins: config.admins.clone() },
        connections: HashMap::new(),
        admission: Admission::new(
            config.max_connections,
            ClientCaps {
                connections: config.max_connections_per_client,
                calls: config.max_calls_per_client,
                followers: config.max_followers_per_client,
            },
        ),
        rejections: RejectionLog::default(),
        next_connection: 1,
        queue: Arc::new(WakeQueue::default()),
        timers: Timers::default(),
        jobs,
        ready_pipes: ReadyPipes::default(),
        pipes_waiting_for_writer: ReadyPipes::default(),
        seen_during_ingest: Vec::new(),
        effects: Vec::new(),
        trim_scheduled: false,
        removal_retry_scheduled: false,
        lifecycle: Lifecycle::Serving,
        metrics: Metrics::default(),
        slow_turns: SlowTurnLog::default(),
        metrics_endpoint,
        metrics_page: None,
        service_manager,
        config,
    };
    let result = server.run();
    server.jobs.remove_all();
    if let Some(cgroups) = server.jobs.take_cgroups() {
        cgroups.close();
    }
    state_dir.remove();
    log::info!("server stopped");
    result
}

impl Server {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout =
                if !self.queue.is_empty() || !self.ready_pipes.is_empty() || !self.seen_during_ingest.is_empty() {
                    Some(Duration::ZERO)
                } else {
                    self.timers.next_timeout(now)
                };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(ServerError::Io { what: "the event loop failed", source: err });
                }
            }
            let mut turn = TurnClock::start();
            for source in std::mem::take(&mut self.seen_during_ingest) {
                turn.step(Step::Event(source), || self.dispatch(source));
            }
            for event in events.iter() {
                let source = Source::from_token(event.token());
                turn.step(Step::Event(source), || self.dispatch(source));
            }
            turn.part_done(Part::Arrivals);
            let now = Instant::now();
            while let Some(event) = self.timers.pop_due(now) {
                turn.step(Step::Timer(event), || self.fire(event));
            }
            turn.part_done(Part::Timers);
            self.run_tasks(&mut turn);
            turn.part_done(Part::Calls);
            // Last: a call answered this turn does not wait for the turn's copy of output (up to 2 MiB), and
            // one that arrives during the copy ends it (see `ingest_output`).
            self.ingest_output(&mut events, &mut turn);
            turn.part_done(Part::Output);
            turn.step(Step::Shells, || self.jobs.replenish_shells());
            self.jobs.make_job_dirs_ahead();
            self.jobs.send_spool_writes();
            if let Some(why) = self.jobs.spool_writer_failure() {
                return Err(ServerError::SpoolWriterGone(why));
            }
            if !self.removal_retry_scheduled && self.jobs.has_removals_waiting() {
                self.removal_retry_scheduled = true;
                self.timers.schedule(Instant::now() + limits::REMOVAL_RETRY, TimerEvent::RetryRemovals);
            }
            turn.part_done(Part::Upkeep);
            self.metrics.record_turn(turn.finish());
            self.slow_turns.finished(&turn);
            if self.advance_shutdown() {
                return Ok(());
            }
        }
    }

    fn dispatch(&mut self, source: Source) {
        match source {
            Source::Listener => self.accept(),
            Source::Signals => self.handle_signals(),
            Source::Connection(id) => {
                if let Some(connection) = self.connections.get(&id) {
                    connection.waker.wake_by_ref();
                }
            }
            Source::JobExit(key) => {
                if self.jobs.reap(key) {
                    // The reap took what the pipes held at the end; whatever comes after is read as usual.
                    self.ready_pipes.push(key, Stream::Stdout);
                    self.ready_pipes.push(key, Stream::Stderr);
                }
            }
            Source::JobOutput(key, stream) => self.ready_pipes.push(key, stream),
            Source::JobStartReport(key) => self.jobs.settle_start(key),
            Source::SegmentMover => self.jobs.take_mover_replies(),
            Source::SpoolWriter => {
                if self.jobs.take_confirmations() {
                    while let Some((key, stream)) = self.pipes_waiting_for_writer.pop() {
                        self.ready_pipes.push(key, stream);
                    }
                }
            }
            Source::MetricsListener => {
                let Some(endpoint) = self.metrics_endpoint.as_mut() else { return };
                let over = Instant::now() + scrape::EXCHANGE_TIMEOUT;
                for id in endpoint.accept(self.poll.registry()) {
                    self.timers.schedule(over, TimerEvent::MetricsExchangeOver(id));
                }
            }
            Source::MetricsExchange(id) => {
                let Some(endpoint) = self.metrics_endpoint.as_mut() else { return };
                if let scrape::Progress::Complete(request) = endpoint.ready(id) {
                    let body = match request {
                        // HEAD too: its Content-Length is the page's.
                        scrape::Request::Metrics { .. } => self.metrics_page(),
                        _ => String::new(),
                    };
                    if let Some(endpoint) = self.metrics_endpoint.as_mut() {
                        endpoint.respond(id, scrape::response(request, &body));
                    }
                }
            }
        }
    }

    /// The metrics page: rendered at most once per [`limits::METRICS_PAGE_FRESH`], so scrapes in a loop (the
    /// endpoint needs no certificate) cost the loop a copy, not a count of every job and descriptor.
    fn metrics_page(&mut self) -> String {
        let now = Instant::now();
        match &self.metrics_page {
            Some((rendered, page)) if now.duration_since(*rendered) < limits::METRICS_PAGE_FRESH => page.clone(),
            _ => {
                let page = self.render_metrics();
                self.metrics_page = Some((now, page.clone()));
                page
            }
        }
    }

    /// The metrics exposition: what the loop counted, and the state of the jobs, connections and process now.
    fn render_metrics(&self) -> String {
        let (census, spool_bytes) = self.jobs.census();
        let handshaking = self.connections.values().filter(|c| c.is_handshaking()).count() as u64;
        let rejections = self.rejections.counts();
        self.metrics.render(&Observed {
            census,
            jobs: self.jobs.counters().clone(),
            spool_bytes,
            spool_limit_bytes: self.config.max_output_total,
            connections_handshaking: handshaking,
            connections_established: self.connections.len() as u64 - handshaking,
            rejections: &rejections,
            process: metrics::process_figures(),
        })
    }

    /// Moves job output into the spool: each ready pipe in turn gets a share, until the turn's budget is
    /// spent or every pipe has had one. A pipe left with data waits at the back of the queue; a job that
    /// writes faster than that blocks in `write` (back-pressure), and nothing is dropped.
    ///
    /// The copy goes in pieces of at most [`limits::OUTPUT_BYTES_PER_LOOK`], and whenever that much was copied
    /// since the last look and there is more to do, the loop looks for anything that arrived meanwhile (see
    /// [`Server::yield_to_what_arrived`]): if something did, the turn ends there and the next one serves it
    /// first. So a call waits for at most two pieces, not for the turn's whole budget.
    fn ingest_output(&mut self, events: &mut Events, turn: &mut TurnClock) {
        let mut budget = limits::OUTPUT_BYTES_PER_TURN;
        let mut since_look = 0;
        for _ in 0..self.ready_pipes.len() {
            if budget == 0 || self.yield_to_what_arrived(events, &mut since_look) {
                return;
            }
            let Some((key, stream)) = self.ready_pipes.pop() else { break };
            let mut share = budget.min(limits::OUTPUT_BYTES_PER_PIPE);
            let mut drain = Drain::More;
            while share > 0 && drain == Drain::More {
                let piece = share.min(limits::OUTPUT_BYTES_PER_LOOK);
                let ingested = turn.step(Step::Copy(key, stream), || self.jobs.drain(key, stream, piece));
                turn.copied_output(ingested.bytes);
                let bytes = (ingested.bytes as usize).min(share);
                (share, budget, since_look) = (share - bytes, budget - bytes, since_look + bytes);
                drain = ingested.drain;
                if bytes == 0 {
                    // Nothing moved (whatever `drain` says): the pipe's next share is the next turn's.
                    break;
                }
                if share > 0 && drain == Drain::More && self.yield_to_what_arrived(events, &mut since_look) {
                    self.ready_pipes.push(key, stream);
                    return;
                }
            }
            match drain {
                Drain::More => self.ready_pipes.push(key, stream),
                Drain::Waiting => self.pipes_waiting_for_writer.push(key, stream),
                Drain::Empty | Drain::Closed => {}
            }
        }
    }

    /// During the turn's copy of output, once [`limits::OUTPUT_BYTES_PER_LOOK`] was copied since the last look
    /// (`since_look`): polls without waiting. Job output that became ready joins the queue; anything else (a
    /// call's bytes, a client's socket ready for more, a start's report, a job's end) is kept in
    /// `seen_during_ingest` for the next turn, and the turn's copy stops. A follower's socket that is ready for
    /// more stops it too: with that, one follower of a flooding job streamed as fast or faster
    /// (`docs/performance.md`, session 15).
    fn yield_to_what_arrived(&mut self, events: &mut Events, since_look: &mut usize) -> bool {
        if *since_look < limits::OUTPUT_BYTES_PER_LOOK {
            return false;
        }
        *since_look = 0;
        // A failed poll is the next turn's to report.
        if self.poll.poll(events, Some(Duration::ZERO)).is_err() {
            return false;
        }
        // Empty until now: the turn began with what the last one kept, and a look that keeps something ends
        // the copy.
        for event in events.iter() {
            match Source::from_token(event.token()) {
                Source::JobOutput(key, stream) => self.ready_pipes.push(key, stream),
                source => self.seen_during_ingest.push(source),
            }
        }
        let arrived = !self.seen_during_ingest.is_empty();
        if arrived {
            self.metrics.record_output_copy_cut_short();
        }
        arrived
    }

    /// Registers a new job's pidfd, pipes and start report pipe with the reactor, and schedules the deadline for
    /// that report.
    fn watch_job(&mut self, started: StartedJob) {
        let sources = [
            (started.pidfd, Source::JobExit(started.key)),
            (started.stdout, Source::JobOutput(started.key, Stream::Stdout)),
            (started.stderr, Source::JobOutput(started.key, Stream::Stderr)),
            (started.start_report, Source::JobStartReport(started.key)),
        ];
        self.timers.schedule(Instant::now() + START_TIMEOUT, TimerEvent::StartDeadline(started.key));
        for (fd, source) in sources {
            if let Err(err) = self.poll.registry().register(&mut SourceFd(&fd), source.token(), Interest::READABLE) {
                // Without the registration the job would never be seen to end: stop it now rather than leak it.
                log::error!("cannot watch job descriptor {fd}: {err}; killing the job");
                self.jobs.kill(started.key);
            }
        }
    }

    /// Carries out what the calls polled last asked for.
    fn apply_effects(&mut self) {
        for effect in std::mem::take(&mut self.effects) {
            match effect {
                Effect::WatchJob(started) => self.watch_job(started),
                Effect::KillJobAt(key, at) => self.timers.schedule(at, TimerEvent::KillJob(key)),
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    // EMFILE and friends: keep serving what we have; the next readiness event retries.
                    log::warn!("accept failed: {err}");
                    return;
                }
            };
            self.make_room_for_a_handshake();
            let _ = socket.set_nodelay(true);
            let tls = match rustls::ServerConnection::new(Arc::clone(&self.tls)) {
                Ok(mut tls) => {
                    tls.set_buffer_limit(Some(limits::TLS_SEND_BUFFER));
                    tls
                }
                Err(err) => {
                    log::error!("cannot start TLS for {peer}: {err}");
                    continue;
                }
            };
            let id = self.next_connection;
            self.next_connection += 1;
            let token = Source::Connection(id).token();
            if let Err(err) = self.poll.registry().register(&mut socket, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::error!("cannot watch connection from {peer}: {err}");
                continue;
            }
            log::debug!("connection {id} from {peer}");
            self.metrics.record_connection();
            let mut connection = Connection::new(id, peer, socket, tls, self.queue.waker(TaskId::connection(id)));
            if self.lifecycle != Lifecycle::Serving {
                connection.go_away();
            }
            connection.waker.wake_by_ref();
            self.connections.insert(id, connection);
            self.timers.schedule(Instant::now() + limits::HANDSHAKE_TIMEOUT, TimerEvent::HandshakeDeadline(id));
            self.timers.schedule(Instant::now() + limits::IDLE_TIMEOUT, TimerEvent::IdleCheck(id));
        }
    }

    /// Keeps unfinished handshakes under their cap: closes the oldest one of the address holding the most.
    fn make_room_for_a_handshake(&mut self) {
        let holders = || self.connections.values().filter(|c| c.holds_handshake_slot()).map(|c| (c.id, c.peer.ip()));
        if holders().count() < limits::MAX_HANDSHAKING {
            return;
        }
        if let Some(victim) = admission::handshake_to_evict(holders()) {
            log::debug!("connection {victim}: unfinished handshake closed to make room for a new connection");
            if let Some(connection) = self.connections.get_mut(&victim) {
                self.rejections.reject(&mut connection.rejected, Rejection::Evicted, None);
            }
            self.close_connection(victim);
        }
    }

    /// Drops a connection, giving back its place among the established ones and what its calls held.
    fn close_connection(&mut self, id: u64) {
        if let Some(mut connection) = self.connections.remove(&id) {
            for call in connection.calls.values_mut() {
                call.release(&mut self.admission, &mut connection.requests, &mut self.metrics);
            }
            if let Some(caller) = connection.admitted_as() {
                self.admission.release(caller);
            }
            if !self.trim_scheduled {
                self.trim_scheduled = true;
                self.timers.schedule(Instant::now() + limits::TRIM_AFTER, TimerEvent::TrimMemory);
            }
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(signal)) = sys::read_signal(self.signals.as_raw_fd()) {
            if self.lifecycle == Lifecycle::Serving {
                let grace = self.config.shutdown_grace;
                log::info!("signal {signal}: runnel server shutting down: stopping jobs (grace {grace:?})");
                self.begin_shutdown();
            } else {
                log::info!("signal {signal} again: killing every job now");
                for key in self.jobs.running_jobs().collect::<Vec<_>>() {
                    self.jobs.kill(key);
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.lifecycle = Lifecycle::StoppingJobs;
        self.service_manager.notify("STOPPING=1");
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.jobs.begin_shutdown();
        let kill_at = Instant::now() + self.config.shutdown_grace;
        for key in self.jobs.running_jobs().collect::<Vec<_>>() {
            self.jobs.request_stop(key, EndReason::ServerShutdown);
            self.timers.schedule(kill_at, TimerEvent::KillJob(key));
        }
        // Calls that wait for shutdown (health watches, reflection streams) see it when next polled: poll every
        // call once (the others find nothing new). No list of waiters is kept meanwhile, which calls that ended
        // would leave behind.
        for call in self.connections.values().flat_map(|c| c.calls.values()) {
            call.waker.wake_by_ref();
        }
    }

    /// Moves shutdown forward; true when the loop should end.
    fn advance_shutdown(&mut self) -> bool {
        match self.lifecycle {
            Lifecycle::Serving => false,
            Lifecycle::StoppingJobs => {
                if !self.jobs.has_running() {
                    self.lifecycle = Lifecycle::Draining;
                    self.timers.schedule(Instant::now() + limits::SHUTDOWN_DRAIN, TimerEvent::FollowersDrainOver);
                    return self.advance_shutdown();
                }
                false
            }
            Lifecycle::Draining => {
                let followers = self.connections.values().flat_map(|c| c.calls.values()).any(|call| call.is_follower());
                // What the jobs wrote before they ended is taken in first (at most `SHUTDOWN_DRAIN`, as followers).
                if !followers && !self.jobs.has_output_owed() {
                    self.close_connections();
                    return self.advance_shutdown();
                }
                false
            }
            Lifecycle::Closing => self.connections.is_empty(),
        }
    }

    fn close_connections(&mut self) {
        self.lifecycle = Lifecycle::Closing;
        for connection in self.connections.values_mut() {
            connection.go_away();
            connection.waker.wake_by_ref();
        }
        self.timers.schedule(Instant::now() + limits::SHUTDOWN_DRAIN, TimerEvent::ConnectionsCloseOver);
    }

    fn fire(&mut self, event: TimerEvent) {
        match event {
            TimerEvent::KillJob(key) => self.jobs.kill(key),
            TimerEvent::RetryRemovals => {
                self.removal_retry_scheduled = false;
                // Scheduled again at the end of the turn if some still wait.
                self.jobs.retry_removals();
                // While the mover has not answered, starts waiting for directories look at how long they waited.
                self.jobs.wake_dirs_waiters();
            }
            TimerEvent::TrimMemory => {
                self.trim_scheduled = false;
                sys::give_back_freed_memory();
            }
            TimerEvent::StartDeadline(key) => self.jobs.start_overdue(key),
            TimerEvent::CallDeadline(connection_id, call_id) => {
                let Some(connection) = self.connections.get_mut(&connection_id) else { return };
                if let Some(mut call) = connection.calls.remove(&call_id) {
                    call.abort(CallError::DeadlineExceeded);
                    call.release(&mut self.admission, &mut connection.requests, &mut self.metrics);
                    connection.waker.wake_by_ref();
                }
            }
            TimerEvent::HandshakeDeadline(id) => {
                // Also ends a refused connection: it had the time it took to read why.
                if let Some(connection) = self.connections.get_mut(&id).filter(|c| c.holds_handshake_slot()) {
                    if connection.is_handshaking() {
                        let (peer, seconds) = (connection.peer, limits::HANDSHAKE_TIMEOUT.as_secs());
                        self.rejections.reject(
                            &mut connection.rejected,
                            Rejection::HandshakeTimeout,
                            Some(format_args!("connection from {peer} closed: no handshake within {seconds} s")),
                        );
                    }
                    self.close_connection(id);
                }
            }
            TimerEvent::IdleCheck(id) => {
                let Some(connection) = self.connections.get_mut(&id) else { return };
                let has_calls = !connection.calls.is_empty();
                match next_idle_check(Instant::now(), connection.last_active, has_calls) {
                    Some(at) => self.timers.schedule(at, TimerEvent::IdleCheck(id)),
                    None => {
                        log::debug!("connection {id}: idle, closing");
                        connection.go_away();
                        connection.waker.wake_by_ref();
                    }
                }
            }
            // Each phase's timer acts only in its own phase: the followers' timer must not cut short the
            // closing phase's own allowance when the followers finished early.
            TimerEvent::FollowersDrainOver if self.lifecycle == Lifecycle::Draining => self.close_connections(),
            TimerEvent::ConnectionsCloseOver if self.lifecycle == Lifecycle::Closing => {
                for id in self.connections.keys().copied().collect::<Vec<_>>() {
                    self.close_connection(id);
                }
            }
            TimerEvent::FollowersDrainOver | TimerEvent::ConnectionsCloseOver => {}
            TimerEvent::MetricsExchangeOver(id) => {
                if let Some(endpoint) = self.metrics_endpoint.as_mut() {
                    endpoint.close(id);
                }
            }
        }
    }

    /// Polls woken tasks until none is left (or the per-turn budget is spent).
    fn run_tasks(&mut self, turn: &mut TurnClock) {
        let mut deadlines = Vec::new();
        for _ in 0..limits::TASK_ROUNDS_PER_TURN {
            let ready = self.queue.take();
            if ready.is_empty() {
                break;
            }
            for task in ready {
                let step = match self.connections.get(&task.connection) {
                    _ if task.is_connection() => Step::Connection(task.connection),
                    Some(connection) => Step::Call {
                        connection: task.connection,
                        method: connection.calls.get(&task.call).and_then(|call| call.method_name()),
                    },
                    None => continue,
                };
                turn.step(step, || self.poll_task(task, &mut deadlines));
            }
            for (task, timeout) in deadlines.drain(..) {
                self.timers.schedule(Instant::now() + timeout, TimerEvent::CallDeadline(task.connection, task.call));
            }
        }
    }

    fn poll_task(&mut self, task: TaskId, deadlines: &mut Vec<(TaskId, Duration)>) {
        let Some(connection) = self.connections.get_mut(&task.connection) else { return };
        if task.is_connection() {
            let waker = connection.waker.clone();
            let mut cx = Context::from_waker(&waker);
            let state = connection.poll(
                &mut cx,
                &self.settings,
                (&mut self.admission, &mut self.rejections),
                &self.queue,
                deadlines,
            );
            if state == ConnectionState::Closed {
                log::debug!("connection {} closed", task.connection);
                self.close_connection(task.connection);
            }
            return;
        }
        let Some(call) = connection.calls.get_mut(&task.call) else { return };
        let waker = call.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let mut ctx = ServiceContext {
            jobs: &mut self.jobs,
            admission: &mut self.admission,
            effects: &mut self.effects,
            stop_grace: self.config.stop_grace,
            shutting_down: self.lifecycle != Lifecycle::Serving,
            metrics: &mut self.metrics,
        };
        if let Poll::Ready(()) = call.poll(&mut cx, &mut ctx, &mut connection.requests) {
            call.release(&mut self.admission, &mut connection.requests, &mut self.metrics);
            connection.calls.remove(&task.call);
            connection.last_active = Instant::now();
            // The call's last frames are queued in h2: let the connection write them.
            connection.waker.wake_by_ref();
        }
        self.apply_effects();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_checks_never_poll_and_close_only_idle_connections() {
        let start = Instant::now();
        let idle = limits::IDLE_TIMEOUT;
        // A long call (e.g. following a silent job) long after the last activity: next look a whole period later.
        let later = start + idle * 3;
        assert_eq!(next_idle_check(later, start, true), Some(later + idle));
        // No calls, idle for the whole period: close.
        assert_eq!(next_idle_check(start + idle, start, false), None);
        // No calls, active recently: look again exactly when it would become idle.
        let recent = start + idle / 2;
        assert_eq!(next_idle_check(start + idle, recent, false), Some(recent + idle));
    }
}
