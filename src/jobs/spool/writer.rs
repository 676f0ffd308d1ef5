//! Writing job output into spool files off the event loop.
//!
//! A write into a file's page cache can wait for the disk. While the kernel writes a spool file back, ext4 holds
//! the page that the next record is appended to, and the inode's block map while it allocates blocks; under
//! output floods on the development VM that held the loop for 15–101 ms, about once every five 10 s flood
//! phases, with every client waiting (`docs/performance.md`, session 17; never on a tmpfs). So the loop no
//! longer writes spool files itself. It splices a job's output from the job's pipe into the *data pipe*,
//! which only moves page references and never waits for the disk, and tells a helper process it started from
//! its own executable (`runnel __writer`) what to do with those bytes. The helper does it in order:
//!
//! - *open*: a segment file (sent with the command), known by a number from then on;
//! - *data*: move the next `len` bytes of the data pipe into a file at an offset (`splice`, or `read` and
//!   `pwrite` where the file system cannot splice);
//! - *write*: a few bytes at an offset (a segment's header; a record's end mark, then its length, then its stream
//!   tag, the order `log.rs` needs for a crash to leave whole records);
//! - *close*: a file, cut to its length first if asked (a writer's last close waits for block allocation);
//! - *discard*: throw away bytes of the data pipe that found no segment.
//!
//! Commands go in `SOCK_SEQPACKET` messages (several to a message; a file travels with `SCM_RIGHTS`, one to a
//! message), sent once a loop turn. The helper answers with how many commands it has carried out so far, once it
//! wrote a MiB since its last answer, 2 ms after the first command since then, or when none came for 1 ms (see
//! [`CONFIRM_BYTES`]). The loop never waits: what it cannot send yet stays queued in order, and a log's readers
//! read only output whose commands were carried out ([`OutputLog`](super::OutputLog) keeps that mark). The data
//! pipe's size bounds the output on its way to the disk: with no room left, output waits in the jobs' pipes
//! (back-pressure, nothing dropped) until the helper confirms more.
//!
//! A write that fails for want of space (`ENOSPC`, `EDQUOT`) is tried again every 100 ms, so a full disk stops
//! the jobs' output instead of losing it (the helper says so on stderr, once a minute). Any other failure loses
//! what was to go to that file from then on, said on stderr, and empties the file, so a reader meets an error
//! there, never old bytes (a spare's). The helper ends when the server closes its socket, after carrying out what
//! it was sent, even when the server was killed (`sys::AtServerDeath::FinishesWhatItWasSent`; it then waits for no
//! room on a full disk). The loop treats its death as fatal: output it had taken from jobs
//! would be lost unseen.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::sys::{self, Received};

/// A segment file being written: open on the loop, or handed to the spool writer and known by a number.
#[derive(Debug)]
pub enum SegmentFile {
    Here(File),
    Writer(u64),
}

/// Where a record's data is spliced: into a file the loop holds, or into the data pipe for the spool writer to
/// move into its file with that number.
#[derive(Clone, Copy, Debug)]
pub enum SpliceTarget {
    File(RawFd),
    Writer(u64),
}

/// The hidden subcommand that runs the helper (`runnel __writer`).
pub const SPOOL_WRITER_COMMAND: &str = "__writer";

/// How long the server, stopping, waits for the writer to carry out what it was sent.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// Commands sent and not yet carried out, past which the loop takes no more output until the helper catches up.
const MAX_UNCONFIRMED_COMMANDS: u64 = 16 * 1024;

/// Queued command bytes past which the loop takes no more output (the socket is full: the helper is behind).
const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// The largest message of commands the loop sends.
const MESSAGE_BYTES: usize = 16 * 1024;

/// The helper confirms what it carried out once it wrote this much output since its last confirmation, or
/// [`CONFIRM_WITHIN`] after the first command since then, or when no command came for [`CONFIRM_LINGER_MS`].
const CONFIRM_BYTES: usize = 1024 * 1024;
const CONFIRM_WITHIN: Duration = Duration::from_millis(2);
const CONFIRM_LINGER_MS: i32 = 1;

/// Tried again after this long when the disk is full.
const FULL_DISK_RETRY: Duration = Duration::from_millis(100);

const DATA_PIPE: u8 = b'P';
const OPEN: u8 = b'O';
const DATA: u8 = b'D';
const DISCARD: u8 = b'X';
const WRITE: u8 = b'W';
const CLOSE: u8 = b'C';

/// One command to the helper. Files are known by the number their [`Command::Open`] gave them.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    /// The data pipe's read end comes with this message.
    DataPipe,
    /// A segment file comes with this message, known as `file` from now on.
    Open { file: u64 },
    /// Move the next `len` bytes of the data pipe into `file` at `at`.
    Data { file: u64, at: u64, len: u32 },
    /// Throw away the next `len` bytes of the data pipe.
    Discard { len: u32 },
    /// Write `bytes` into `file` at `at`.
    Write { file: u64, at: u64, bytes: &'a [u8] },
    /// Close `file`, cut to `cut_to` bytes first if given.
    Close { file: u64, cut_to: Option<u64> },
}

impl Command<'_> {
    /// Appends the command to `out`: its kind, its numbers (little-endian), then the bytes it carries.
    fn encode(&self, out: &mut Vec<u8>) {
        let numbers = |values: &[u64]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let (kind, fields, carried): (u8, Vec<u8>, &[u8]) = match self {
            Command::DataPipe => (DATA_PIPE, Vec::new(), &[]),
            Command::Open { file } => (OPEN, numbers(&[*file]), &[]),
            Command::Data { file, at, len } => {
                (DATA, [numbers(&[*file, *at]), len.to_le_bytes().to_vec()].concat(), &[])
            }
            Command::Discard { len } => (DISCARD, len.to_le_bytes().to_vec(), &[]),
            Command::Write { file, at, bytes } => {
                #[allow(clippy::cast_possible_truncation, reason = "writes are segment headers, checked on queueing")]
                let len = (bytes.len() as u16).to_le_bytes();
                (WRITE, [numbers(&[*file, *at]), len.to_vec()].concat(), bytes)
            }
            Command::Close { file, cut_to } => (CLOSE, numbers(&[*file, cut_to.unwrap_or(u64::MAX)]), &[]),
        };
        out.push(kind);
        out.extend_from_slice(&fields);
        out.extend_from_slice(carried);
    }

    /// The command at the start of `bytes` and what follows it; `None` if it is not one.
    fn decode(bytes: &[u8]) -> Option<(Command<'_>, &[u8])> {
        let (&kind, mut rest) = bytes.split_first()?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (field, after) = rest.split_at_checked(n)?;
            rest = after;
            Some(field)
        };
        let mut u64_field = || take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let command = match kind {
            DATA_PIPE => Command::DataPipe,
            OPEN => Command::Open { file: u64_field()? },
            DATA => {
                let (file, at) = (u64_field()?, u64_field()?);
                let len = u32::from_le_bytes(take(4)?.try_into().ok()?);
                Command::Data { file, at, len }
            }
            DISCARD => Command::Discard { len: u32::from_le_bytes(take(4)?.try_into().ok()?) },
            WRITE => {
                let (file, at) = (u64_field()?, u64_field()?);
                let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
                Command::Write { file, at, bytes: take(usize::from(len))? }
            }
            CLOSE => {
                let (file, cut_to) = (u64_field()?, u64_field()?);
                Command::Close { file, cut_to: (cut_to != u64::MAX).then_some(cut_to) }
            }
            _ => return None,
        };
        Some((command, rest))
    }
}

/// A message on its way to the helper: commands, and the file the first of them is about.
#[derive(Debug)]
struct Outgoing {
    bytes: Vec<u8>,
    file: Option<OwnedFd>,
    /// Commands in it.
    commands: u64,
}

/// The server's side of the helper.
#[derive(Debug)]
pub struct SpoolWriter {
    /// `None` for a helper served by a test's thread.
    process: Option<Child>,
    /// The server's end, non-blocking.
    socket: OwnedFd,
    /// The data pipe's write end (non-blocking), and how many bytes it holds.
    data_pipe: OwnedFd,
    capacity: usize,
    /// Messages not sent yet, oldest first.
    queued: VecDeque<Outgoing>,
    queued_bytes: usize,
    /// Commands issued (sent or queued): the next command's number.
    issued: u64,
    /// Commands the helper has carried out.
    confirmed: u64,
    /// Data commands not carried out yet (their number, their length), and their total length: what the data
    /// pipe may still hold.
    data_unconfirmed: VecDeque<(u64, usize)>,
    data_in_flight: usize,
    next_file: u64,
    /// Why the helper is gone, once it is: nothing is sent from then on.
    failure: Option<io::Error>,
}

impl SpoolWriter {
    /// Starts the helper from `executable` (the server's own).
    pub fn start(executable: &Path, state_dir_lock: Option<BorrowedFd<'_>>) -> io::Result<SpoolWriter> {
        let (socket, helper_end) = sys::seqpacket_pair()?;
        let args = [SPOOL_WRITER_COMMAND.as_ref()];
        // What the server sent it is written even if the server is killed (a job's end, output a client saw).
        let at_death = sys::AtServerDeath::FinishesWhatItWasSent;
        let process = sys::spawn_helper(executable, &args, helper_end, state_dir_lock, at_death)?;
        let writer = SpoolWriter::over(socket, Some(process))?;
        if let Some(process) = &writer.process {
            log::info!("spool writer started: pid {}, writing job output into the spool", process.id());
        }
        Ok(writer)
    }

    /// A writer whose helper is [`serve`] run by the caller (a test's thread) on the returned socket.
    #[cfg(test)]
    pub fn with_socket_pair() -> (SpoolWriter, OwnedFd) {
        let (socket, helper_end) = sys::seqpacket_pair().unwrap();
        (SpoolWriter::over(socket, None).unwrap(), helper_end)
    }

    fn over(socket: OwnedFd, process: Option<Child>) -> io::Result<SpoolWriter> {
        let (data_read, data_pipe, capacity) = sys::spool_data_pipe()?;
        let mut writer = SpoolWriter {
            process,
            socket,
            data_pipe,
            capacity,
            queued: VecDeque::new(),
            queued_bytes: 0,
            issued: 0,
            confirmed: 0,
            data_unconfirmed: VecDeque::new(),
            data_in_flight: 0,
            next_file: 0,
            failure: None,
        };
        writer.queue_with_file(&Command::DataPipe, data_read);
        writer.flush();
        match writer.failure.take() {
            Some(err) => Err(err),
            None => Ok(writer),
        }
    }

    /// The socket the helper's confirmations arrive on, for the loop to watch.
    pub fn socket(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The data pipe's write end: output spliced into it must be given a [`Self::data`] (or [`Self::discard`])
    /// at once, in the order it went in.
    pub fn data_pipe(&self) -> RawFd {
        self.data_pipe.as_raw_fd()
    }

    /// How many more bytes of output may go into the data pipe now: 0 while the helper is behind.
    pub fn room(&self) -> usize {
        if self.issued - self.confirmed >= MAX_UNCONFIRMED_COMMANDS || self.queued_bytes >= MAX_QUEUED_BYTES {
            return 0;
        }
        self.capacity.saturating_sub(self.data_in_flight)
    }

    /// The number of the last command issued, which the helper has carried out once [`Self::confirmed`] passes it.
    pub fn last_issued(&self) -> Option<u64> {
        self.issued.checked_sub(1)
    }

    /// How many commands the helper has carried out.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Hands `file` to the helper; the number it is known by from now on.
    pub fn open(&mut self, file: File) -> u64 {
        let number = self.next_file;
        self.next_file += 1;
        self.queue_with_file(&Command::Open { file: number }, file.into());
        number
    }

    /// `len` bytes just spliced into the data pipe go into `file` at `at`.
    pub fn data(&mut self, file: u64, at: u64, len: usize) {
        self.data_command(len, |len| Command::Data { file, at, len });
    }

    /// `len` bytes just spliced into the data pipe go nowhere.
    pub fn discard(&mut self, len: usize) {
        self.data_command(len, |len| Command::Discard { len });
    }

    fn data_command(&mut self, len: usize, command: impl Fn(u32) -> Command<'static>) {
        // Pieces no larger than a u32 (a call moves at most the data pipe's size, far less).
        let mut left = len;
        while left > 0 {
            let piece = left.min(u32::MAX as usize);
            #[allow(clippy::cast_possible_truncation, reason = "at most u32::MAX")]
            self.queue(&command(piece as u32));
            self.data_unconfirmed.push_back((self.issued - 1, piece));
            self.data_in_flight += piece;
            left -= piece;
        }
    }

    /// Writes `bytes` (a segment header, a record's end mark or header: a few hundred bytes at most) into `file` at
    /// `at`.
    pub fn write(&mut self, file: u64, at: u64, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > usize::from(u16::MAX) {
            return Err(io::Error::other("a spool write of more than 64 KiB sent to the spool writer"));
        }
        self.queue(&Command::Write { file, at, bytes });
        Ok(())
    }

    /// Closes `file`, cut to `cut_to` bytes first if given.
    pub fn close(&mut self, file: u64, cut_to: Option<u64>) {
        self.queue(&Command::Close { file, cut_to });
    }

    fn queue(&mut self, command: &Command<'_>) {
        let joins_last = self.queued.back().is_some_and(|m| m.file.is_none() && m.bytes.len() < MESSAGE_BYTES);
        if !joins_last {
            self.queued.push_back(Outgoing { bytes: Vec::with_capacity(256), file: None, commands: 0 });
        }
        if let Some(message) = self.queued.back_mut() {
            let before = message.bytes.len();
            command.encode(&mut message.bytes);
            message.commands += 1;
            self.queued_bytes += message.bytes.len() - before;
        }
        self.issued += 1;
    }

    fn queue_with_file(&mut self, command: &Command<'_>, file: OwnedFd) {
        let mut bytes = Vec::new();
        command.encode(&mut bytes);
        self.queued_bytes += bytes.len();
        self.queued.push_back(Outgoing { bytes, file: Some(file), commands: 1 });
        self.issued += 1;
    }

    /// Why the helper is gone, if it is: the server cannot go on without it (see the module documentation).
    pub fn failure(&self) -> Option<&io::Error> {
        self.failure.as_ref()
    }

    /// Sends what is queued, as far as the socket takes it (the rest goes with a later call).
    pub fn flush(&mut self) {
        if let Err(err) = self.send_queued() {
            self.fail(err);
        }
    }

    fn send_queued(&mut self) -> io::Result<()> {
        while let Some(message) = self.queued.front() {
            if self.failure.is_some() {
                return Ok(());
            }
            let fds: Vec<RawFd> = message.file.iter().map(AsRawFd::as_raw_fd).collect();
            if !sys::send_with_descriptors(self.socket.as_raw_fd(), &message.bytes, &fds)? {
                return Ok(());
            }
            if let Some(sent) = self.queued.pop_front() {
                self.queued_bytes -= sent.bytes.len();
                // The file's descriptor is closed here: the helper has its own now.
            }
        }
        Ok(())
    }

    fn fail(&mut self, err: io::Error) {
        if self.failure.is_none() {
            self.failure = Some(err);
        }
    }

    /// Takes the helper's confirmations (without waiting) and sends what was queued meanwhile: true if it
    /// carried out more commands. A helper gone, or one that sent what it never sends, is a
    /// [`Self::failure`].
    pub fn receive(&mut self) -> bool {
        let before = self.confirmed;
        if let Err(err) = self.take_confirmations() {
            self.fail(err);
        }
        self.flush();
        self.confirmed > before
    }

    fn take_confirmations(&mut self) -> io::Result<()> {
        while self.failure.is_none() {
            match sys::receive_with_descriptors(self.socket.as_raw_fd(), false)? {
                Received::Empty => break,
                Received::Closed => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "it closed its socket (it ended)"))
                }
                Received::Message { bytes, fds } => self.confirm(&bytes, fds.len())?,
            }
        }
        Ok(())
    }

    fn confirm(&mut self, message: &[u8], fds: usize) -> io::Result<()> {
        let done = <[u8; 8]>::try_from(message)
            .ok()
            .map(u64::from_le_bytes)
            .filter(|done| fds == 0 && *done >= self.confirmed && *done <= self.issued - self.queued_commands());
        let Some(done) = done else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a confirmation the spool writer never sends"));
        };
        self.confirmed = done;
        while self.data_unconfirmed.front().is_some_and(|&(number, _)| number < done) {
            if let Some((_, len)) = self.data_unconfirmed.pop_front() {
                self.data_in_flight -= len;
            }
        }
        Ok(())
    }

    fn queued_commands(&self) -> u64 {
        self.queued.iter().map(|m| m.commands).sum()
    }

    /// Server shutdown: sends what is queued and waits until the helper carried it all out and ended, at most
    /// until `deadline`; false if it did not.
    pub fn finish(mut self, deadline: Instant) -> bool {
        let finished = self.send_the_rest(deadline).and_then(|()| {
            sys::shut_down_sending(self.socket.as_raw_fd())?;
            while self.confirmed < self.issued {
                let left = deadline.saturating_duration_since(Instant::now()).as_millis();
                if !sys::wait_readable(self.socket.as_raw_fd(), i32::try_from(left).unwrap_or(i32::MAX))? {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "it did not finish in time"));
                }
                self.receive();
                // Its last confirmation and its end can come in one read: only an end before it counts.
                if let (Some(err), false) = (self.failure.take(), self.confirmed == self.issued) {
                    return Err(err);
                }
            }
            Ok(())
        });
        if let Err(err) = &finished {
            log::warn!("the spool writer did not write out all job output: {err}");
            self.kill();
            return false;
        }
        self.reap();
        true
    }

    fn send_the_rest(&mut self, deadline: Instant) -> io::Result<()> {
        while !self.queued.is_empty() {
            self.receive();
            if let Some(err) = self.failure.take() {
                return Err(err);
            }
            if self.queued.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now()).as_millis();
            if left == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "it did not take what was queued in time"));
            }
            // Room in the socket comes as the helper takes messages, and it confirms what it carried out.
            sys::wait_readable(self.socket.as_raw_fd(), i32::try_from(left.min(100)).unwrap_or(100))?;
        }
        Ok(())
    }

    fn kill(mut self) {
        if let Some(process) = self.process.as_mut() {
            if let Err(err) = process.kill() {
                log::debug!("cannot kill the spool writer: {err}");
            }
        }
    }

    fn reap(mut self) {
        let Some(process) = self.process.take() else { return };
        drop(self.socket);
        sys::reap_helper(process, "spool writer");
    }

    /// The helper's process id, for the server's message when it is gone.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }
}

/// The helper's state: the data pipe, and the files it was given.
struct Helper {
    /// Its socket to the server, to tell whether the server is still there.
    server: RawFd,
    data: Option<File>,
    /// The helper's own pipe, which output goes through from the data pipe to a file (see [`Helper::move_data`]).
    relay: sys::OutputPipe,
    files: HashMap<u64, File>,
    relay_size: usize,
    /// Where the file system cannot splice: `read` and `pwrite` through this buffer instead.
    read_buf: Vec<u8>,
    splice: bool,
    /// Commands carried out.
    done: u64,
    /// When the helper last said the disk is full.
    said_full: Option<Instant>,
}

/// Serves the commands arriving on `socket` until the server closes it.
pub fn serve(socket: &OwnedFd) -> io::Result<()> {
    let relay = sys::relay_pipe()?;
    let relay_size = sys::pipe_size(relay.write.as_raw_fd())?;
    let mut helper = Helper {
        server: socket.as_raw_fd(),
        data: None,
        relay,
        relay_size,
        files: HashMap::new(),
        read_buf: Vec::new(),
        splice: true,
        done: 0,
        said_full: None,
    };
    // Since the last confirmation: when the first command after it was carried out, and the output written.
    let mut unconfirmed: Option<(Instant, usize)> = None;
    loop {
        // A batch: a message, waiting for it, then whatever else is queued.
        let mut wait = true;
        let closed = loop {
            match sys::receive_with_descriptors(socket.as_raw_fd(), wait) {
                Ok(Received::Message { bytes, fds }) => {
                    let (since, written) = unconfirmed.get_or_insert((Instant::now(), 0));
                    *written += helper.carry_out(&bytes, fds)?;
                    // A server that keeps sending still hears back on time.
                    if *written >= CONFIRM_BYTES || since.elapsed() >= CONFIRM_WITHIN {
                        break false;
                    }
                }
                Ok(Received::Empty) => break false,
                Ok(Received::Closed) => break true,
                // The server died with confirmations unread: the kernel says so once, before the commands it had
                // sent, which are still carried out (see `sys::AtServerDeath`); then comes the end.
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(err) => return Err(err),
            }
            wait = false;
        };
        // Confirmed now if enough was written or enough time passed since the first command it covers, else
        // once no command came for a moment: fewer wake-ups of the loop under a flood, and readers see output at
        // most a couple of milliseconds later.
        if let Some((since, written)) = unconfirmed {
            let due = written >= CONFIRM_BYTES || since.elapsed() >= CONFIRM_WITHIN;
            if !closed && !due && sys::wait_readable(socket.as_raw_fd(), CONFIRM_LINGER_MS)? {
                continue;
            }
        }
        unconfirmed = None;
        // A server gone: nothing to tell, and the next receive ends the loop.
        let _ = sys::send_with_descriptors(socket.as_raw_fd(), &helper.done.to_le_bytes(), &[]);
        if closed {
            return Ok(());
        }
    }
}

impl Helper {
    /// Carries out the commands of one message: the bytes of output it moved; an error for a command it cannot
    /// read (the server and the helper are the same executable: a bug).
    fn carry_out(&mut self, mut message: &[u8], fds: Vec<OwnedFd>) -> io::Result<usize> {
        let mut fds = fds.into_iter();
        let mut data = 0;
        let malformed = || io::Error::new(io::ErrorKind::InvalidData, "a command the server never sends");
        while !message.is_empty() {
            let (command, rest) = Command::decode(message).ok_or_else(malformed)?;
            message = rest;
            match command {
                Command::DataPipe => self.data = Some(File::from(fds.next().ok_or_else(malformed)?)),
                Command::Open { file } => {
                    self.files.insert(file, File::from(fds.next().ok_or_else(malformed)?));
                }
                Command::Data { file, at, len } => {
                    self.move_data(file, at, len as usize)?;
                    data += len as usize;
                }
                Command::Discard { len } => self.throw_away(len as usize)?,
                Command::Write { file, at, bytes } => self.write_file(file, |f| f.write_all_at(bytes, at)),
                Command::Close { file, cut_to } => {
                    if let (Some(f), Some(len)) = (self.files.get(&file), cut_to) {
                        if let Err(err) = f.set_len(len) {
                            eprintln!("runnel spool writer: cannot give back unused disk blocks of a segment: {err}");
                        }
                    }
                    self.files.remove(&file);
                }
            }
            self.done += 1;
        }
        Ok(data)
    }

    /// Writes into `file` with `write`, again while the disk is full; a file that fails otherwise is given up
    /// (closed: nothing more goes into it).
    fn write_file(&mut self, file: u64, write: impl Fn(&File) -> io::Result<()>) {
        loop {
            let Some(f) = self.files.get(&file) else { return };
            match write(f) {
                Ok(()) => return,
                Err(err) if is_full_disk(&err) => self.wait_for_room(&err),
                Err(err) => return self.give_up(file, &err),
            }
        }
    }

    fn wait_for_room(&mut self, err: &io::Error) {
        // Its server died (it did not stop): what it sent is written while there is room, but a next server
        // waits for this helper to end before it starts (the state directory's lock), so room is not waited for.
        if sys::peer_closed(self.server) {
            eprintln!("runnel spool writer: the disk is full ({err}) and the server is gone: the job output not yet written is lost");
            std::process::exit(1);
        }
        if self.said_full.is_none_or(|said| said.elapsed() >= Duration::from_secs(60)) {
            eprintln!("runnel spool writer: the state directory's disk is full ({err}); job output waits for room");
            self.said_full = Some(Instant::now());
        }
        std::thread::sleep(FULL_DISK_RETRY);
    }

    /// Moves `len` bytes of the data pipe into `file` at `at`, a relay's worth at a time: first out of the data
    /// pipe into the relay, which moves page references only, then from the relay into the file. A splice holds
    /// the lock of the pipe it takes from until the file system is done with the write, and the loop's splices
    /// into the data pipe take that pipe's lock too: straight from the data pipe into the file, a write waiting
    /// for writeback held the loop 35 ms.
    fn move_data(&mut self, file: u64, at: u64, len: usize) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let piece = self.take_piece(len - done)?;
            self.write_piece(file, at + done as u64, piece);
            done += piece;
        }
        Ok(())
    }

    /// Moves up to `most` bytes (at least 1) from the data pipe into the empty relay; how many.
    fn take_piece(&mut self, most: usize) -> io::Result<usize> {
        let data = self.data.as_ref().ok_or_else(|| io::Error::other("data before the data pipe"))?;
        loop {
            match sys::splice_to_pipe(data.as_raw_fd(), self.relay.write.as_raw_fd(), most.min(self.relay_size)) {
                Ok(Some(0)) => return Err(io::Error::other("the data pipe was closed")),
                Ok(Some(n)) => return Ok(n),
                // The server puts the bytes in before it sends the command: they are there, or coming.
                Ok(None) => {
                    sys::wait_readable(data.as_raw_fd(), -1)?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Empties the relay's `len` bytes into `file` at `at`: again while the disk is full; thrown away once the
    /// file is given up (it failed otherwise, or is not known).
    fn write_piece(&mut self, file: u64, at: u64, len: usize) {
        let relay = self.relay.read.as_raw_fd();
        let mut written = 0;
        while written < len && self.splice {
            let Some(f) = self.files.get(&file) else { break };
            match sys::splice_to_file(relay, f.as_raw_fd(), at + written as u64, len - written) {
                Ok(Some(n)) if n > 0 => written += n,
                Ok(_) => relay_broken(&io::Error::other("it held less than was moved into it")),
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => self.splice = false,
                Err(err) if is_full_disk(&err) => self.wait_for_room(&err),
                Err(err) => self.give_up(file, &err),
            }
        }
        if written == len {
            return;
        }
        // The rest is read out of the relay, then written (where the file system cannot splice), or dropped.
        self.read_buf.resize(len - written, 0);
        if let Err(err) = read_exact_from(relay, &mut self.read_buf) {
            relay_broken(&err);
        }
        let position = at + written as u64;
        while let Some(f) = self.files.get(&file) {
            match f.write_all_at(&self.read_buf, position) {
                Ok(()) => return,
                Err(err) if is_full_disk(&err) => self.wait_for_room(&err),
                Err(err) => self.give_up(file, &err),
            }
        }
    }

    /// Writes nothing more into `file`, which failed with `err` (not for want of space), and empties it if it
    /// can: a segment written over a spare whose own header never made it would otherwise show the spare's old
    /// records to a reader.
    fn give_up(&mut self, file: u64, err: &io::Error) {
        eprintln!("runnel spool writer: cannot write job output ({err}); that segment ends there");
        if let Some(f) = self.files.remove(&file) {
            let _ = f.set_len(0);
        }
    }

    /// Reads and drops `len` bytes of the data pipe.
    fn throw_away(&mut self, len: usize) -> io::Result<()> {
        let Some(data) = self.data.as_ref() else { return Err(io::Error::other("data before the data pipe")) };
        let mut left = len;
        self.read_buf.resize(left.clamp(1, 256 * 1024), 0);
        while left > 0 {
            let want = left.min(self.read_buf.len());
            let n = read_some(data, &mut self.read_buf[..want])?;
            if n == 0 {
                return Err(io::Error::other("the data pipe was closed"));
            }
            left -= n;
        }
        Ok(())
    }
}

/// The relay lost track of what it holds: what follows would go to the wrong places, so the helper stops (and
/// the server with it: see the module documentation).
fn relay_broken(err: &io::Error) -> ! {
    eprintln!("runnel spool writer: its relay pipe failed ({err}); stopping");
    std::process::exit(1)
}

/// Reads exactly `buf.len()` bytes that the non-blocking pipe `fd` holds.
fn read_exact_from(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut read = 0;
    while read < buf.len() {
        match sys::read_nonblocking(fd, &mut buf[read..])? {
            Some(n) if n > 0 => read += n,
            _ => return Err(io::Error::other("the pipe held less than expected")),
        }
    }
    Ok(())
}

/// One blocking `read` of the data pipe (its read end blocks: the helper has nothing else to do).
fn read_some(data: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match io::Read::read(&mut &*data, buf) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

fn is_full_disk(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Runs the helper; never returns.
pub fn main(args: Vec<OsString>) -> ! {
    if !args.is_empty() {
        eprintln!("error: INVALID_ARGUMENT: `runnel {SPOOL_WRITER_COMMAND}` is internal to the server");
        std::process::exit(2)
    }
    let socket = sys::helper_channel("runnel spool writer");
    // One file open per running job's segment: as many as the server may run (it raises its own limit after
    // the helpers start).
    if let Err(err) = sys::raise_open_file_limit() {
        eprintln!("runnel spool writer: cannot raise its open-file limit: {err}");
    }
    match serve(&socket) {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("runnel spool writer: {err}; stopping");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::janitor::Janitor;
    use crate::jobs::spool::{Drain, OutputCursor, OutputLog, Stream};
    use crate::scratch::ScratchDir;
    use std::fs::{self, OpenOptions};

    #[test]
    fn commands_read_back_as_sent_and_nothing_else_reads_as_one() {
        let commands = [
            Command::DataPipe,
            Command::Open { file: 7 },
            Command::Data { file: 7, at: 1 << 40, len: u32::MAX },
            Command::Discard { len: 3 },
            Command::Write { file: 0, at: 5, bytes: b"RUNNELSG" },
            Command::Close { file: 9, cut_to: Some(4096) },
            Command::Close { file: 10, cut_to: None },
        ];
        let mut message = Vec::new();
        for command in &commands {
            command.encode(&mut message);
        }
        let mut rest = &message[..];
        for command in &commands {
            let (read, after) = Command::decode(rest).unwrap();
            assert_eq!(&read, command);
            rest = after;
        }
        assert!(rest.is_empty());
        for garbage in
            [&b""[..], b"Z", b"O1234567", b"D12345678123456781", b"W12345678123456780\x05ab", b"R1234567812345678abcd"]
        {
            assert_eq!(Command::decode(garbage), None, "{garbage:?}");
        }
    }

    /// Puts `bytes` into the writer's data pipe, as the loop's splice would.
    fn into_data_pipe(writer: &SpoolWriter, bytes: &[u8]) {
        assert_eq!(sys::write_nonblocking(writer.data_pipe(), bytes).unwrap(), Some(bytes.len()));
    }

    /// A server killed with a confirmation of the writer unread: the writer's next receive fails once
    /// (`ECONNRESET`), and the output the server had sent is written after it all the same (see
    /// `sys::AtServerDeath`).
    #[test]
    fn the_helper_writes_what_a_dead_server_had_sent() {
        let scratch = ScratchDir::new("writer-orphaned");
        let (mut writer, helper_end) = SpoolWriter::with_socket_pair();
        let path = scratch.join("segment");
        let segment = writer.open(OpenOptions::new().create_new(true).write(true).open(&path).unwrap());
        into_data_pipe(&writer, b"taken in");
        writer.data(segment, 0, 8);
        writer.flush();
        // A confirmation it never reads, as a server killed before its next turn.
        sys::send_with_descriptors(helper_end.as_raw_fd(), &0u64.to_le_bytes(), &[]).unwrap();
        drop(writer);
        serve(&helper_end).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"taken in");
    }

    #[test]
    fn the_helper_carries_out_commands_in_order_and_confirms_them() {
        let scratch = ScratchDir::new("writer");
        let (mut writer, helper_end) = SpoolWriter::with_socket_pair();
        let capacity = writer.room();
        assert!(capacity >= sys::PIPE_SIZE, "the data pipe holds at least a job's pipe: {capacity}");
        let create =
            |name: &str| OpenOptions::new().create_new(true).read(true).write(true).open(scratch.join(name)).unwrap();
        let (segment, cut, unwritable) = (create("segment"), create("cut"), scratch.join("read-only"));
        fs::write(&unwritable, b"").unwrap();
        let segment = writer.open(segment);
        let cut = writer.open(cut);
        let unwritable = writer.open(File::open(&unwritable).unwrap());

        writer.write(segment, 0, b"head").unwrap();
        into_data_pipe(&writer, b"first record");
        writer.data(segment, 9, 12);
        // A record's commit: an end mark after its data, then its header (length, then stream tag).
        writer.write(segment, 21, &[0; 5]).unwrap();
        writer.write(segment, 5, &[12, 0, 0, 0]).unwrap();
        writer.write(segment, 4, &[1]).unwrap();
        // Output for a file the helper cannot write is lost, and what follows still arrives.
        into_data_pipe(&writer, b"lost");
        writer.data(unwritable, 0, 4);
        into_data_pipe(&writer, b"thrown away");
        writer.discard(11);
        into_data_pipe(&writer, b"second");
        writer.data(segment, 26, 6);
        writer.write(cut, 0, &[7; 10_000]).unwrap();
        writer.close(cut, Some(100));
        assert_eq!(writer.room(), capacity - 12 - 4 - 11 - 6, "bytes in the data pipe take its room");
        let issued = writer.last_issued().unwrap() + 1;
        writer.flush();
        assert_eq!(writer.confirmed(), 0);

        // The helper, on this thread: it serves what was sent, and returns once the server stops sending.
        sys::shut_down_sending(writer.socket()).unwrap();
        serve(&helper_end).unwrap();
        assert!(writer.receive(), "it confirmed");
        assert_eq!(writer.confirmed(), issued, "every command, the failed one too");
        assert_eq!(writer.room(), capacity, "the data pipe is empty again");
        assert!(writer.failure().is_none());

        let written = fs::read(scratch.join("segment")).unwrap();
        assert_eq!(&written[..4], b"head");
        // The record: its header, its data, the end mark after it.
        assert_eq!(&written[4..9], &[1, 12, 0, 0, 0]);
        assert_eq!(&written[9..21], b"first record");
        assert_eq!(&written[21..26], &[0; 5]);
        assert_eq!(&written[26..], b"second");
        assert_eq!(fs::read(scratch.join("cut")).unwrap(), vec![7; 100], "written, then cut");
        assert!(fs::read(scratch.join("read-only")).unwrap().is_empty());

        drop(helper_end);
        assert!(!writer.receive());
        assert!(writer.failure().is_some(), "a helper gone is a failure");
    }

    #[test]
    fn a_log_written_through_the_helper_is_read_only_as_far_as_it_confirmed() {
        let scratch = ScratchDir::new("writer-log");
        let (writer, helper_end) = SpoolWriter::with_socket_pair();
        let janitor = Janitor::in_place(&scratch);
        let mut spool =
            super::super::Spool::create(scratch.path(), 1 << 20, 8 << 20, janitor, None, Some(writer)).unwrap();
        let mut log = spool.create_log("job").unwrap();
        let pipe = sys::output_pipe().unwrap();
        let mut job_end = File::from(pipe.write);
        io::Write::write_all(&mut job_end, b"hello, ").unwrap();
        let ingested = spool.ingest(&mut log, &"job", Stream::Stdout, pipe.read.as_raw_fd(), 1 << 20);
        assert_eq!((ingested.drain, ingested.bytes), (Drain::Empty, 7));
        assert_eq!((log.end(), log.readable()), (7, 0), "counted, not readable before the helper wrote it");
        let mut cursor = OutputCursor::new(0);
        assert_eq!(log.next_span(&mut cursor, 1024).unwrap(), None);

        io::Write::write_all(&mut job_end, b"world").unwrap();
        drop(job_end);
        let ingested = spool.ingest(&mut log, &"job", Stream::Stdout, pipe.read.as_raw_fd(), 1 << 20);
        assert_eq!((ingested.drain, ingested.bytes), (Drain::Closed, 5));
        spool.finish(&mut log);
        assert!(log.is_finished() && !log.is_complete(), "finished, not yet written");
        spool.send_writes();

        // The helper, on this thread: it serves what was sent, and returns once the server stops sending.
        sys::shut_down_sending(spool.writer_socket().unwrap()).unwrap();
        serve(&helper_end).unwrap();
        let confirmed = spool.receive_confirmations().expect("it confirmed what it wrote");
        assert!(!log.confirm(confirmed), "nothing of the log is left unconfirmed");
        assert!(log.is_complete());
        assert_eq!(log.readable(), 12);
        let mut read = bytes::BytesMut::new();
        while let Some(span) = log.next_span(&mut cursor, 1024).unwrap() {
            log.read_span(&mut cursor, span.len, &mut read).unwrap();
        }
        assert_eq!(&read[..], b"hello, world");
        // Once the segment is closed, its file alone says the same: the helper wrote the segment header and the
        // records as a restarted server reads them back.
        spool.finish_writes();
        let recovered = OutputLog::recover(scratch.join("jobs/job"), 1 << 20, Some(12), true).unwrap();
        assert!(recovered.problems.is_empty() && recovered.unusable.is_empty(), "{:?}", recovered.problems);
        assert_eq!(recovered.log.end(), 12);
        let mut read = bytes::BytesMut::new();
        let mut cursor = OutputCursor::new(0);
        while let Some(span) = recovered.log.next_span(&mut cursor, 1024).unwrap() {
            recovered.log.read_span(&mut cursor, span.len, &mut read).unwrap();
        }
        assert_eq!(&read[..], b"hello, world");
        spool.remove(&mut log);
        spool.finish_removals();
    }
}
