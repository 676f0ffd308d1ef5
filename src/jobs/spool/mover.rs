//! Making and moving segment files off the event loop.
//!
//! A busy job's spool needs a directory operation for each segment: a new segment file is created in the job's
//! directory, or a spare is renamed into it, and a discarded segment is renamed out of it (into `STATE/spare`
//! or `STATE/trash`). Each of these looks the name up in a directory, and while the kernel writes that
//! directory's block back under a flood of output, the lookup waits for the disk: 14–98 ms on the development
//! VM (`docs/performance.md`, "Session 14"), with every client waiting. So a helper process the server starts
//! from its own executable (`runnel __segments STATE`) does them on another core:
//!
//! - *prepare*: while a busy job fills a segment, the helper makes its next one (a spare renamed into place, or
//!   a new file) and sends back an open descriptor, which the loop writes through without ever looking the name
//!   up;
//! - *move*: a discarded segment is renamed into the spare directory, or into the trash for the janitor;
//! - *close*: a segment file the loop wrote comes with the request and the helper closes it (cut to its length
//!   first, for a finished log), since a writer's last close waits for ext4's block allocation under writeback;
//! - *make a job's directories*: ahead of the starts that will take them, a job's output directory with its
//!   first segment file (sent back open) and its working directory. Creating a file or a directory makes a new
//!   inode, and ext4 may have to read that inode's table block while the disk is busy writing back output: a
//!   `mkdir` on the loop waited 18.7 ms for it under 4 floods (`docs/performance.md`, session 19);
//! - *write a job's record*: the bytes the loop encoded (`jobs::record`), into the file by name. Opening it
//!   looks its name up in the job's directory, as a rename does, and a write can wait for writeback; the order
//!   the loop asks in is the order they reach the file, and a job's directory moved into the trash later waits
//!   for them.
//!
//! Requests and replies are `SOCK_SEQPACKET` messages (a close carries its file, a record too large for a
//! message its bytes in a memory file, a reply to a prepare the file made, with `SCM_RIGHTS`); the helper serves
//! them in order, so a segment file is closed (and cut) before a later move takes it, and a record is written
//! before its directory moves into the trash. The loop never waits for a reply: the reactor watches the socket
//! (a start may be waiting for a job's directories), and the loop also looks when it needs one. Nor for room in
//! the socket: a request that finds it full waits in order behind the others on the loop, sent on the removal
//! timer (a helper behind a stalled disk must not hand its work back to the loop, which would then wait for the
//! disk itself). Only when the helper is gone does the loop do the work. Paths are the server's own, under the
//! state directory the helper was started with; it refuses any other. It ends when the server closes its socket,
//! after the requests already sent, even when the server was killed (`sys::AtServerDeath::FinishesWhatItWasSent`:
//! a job's end the server already told a client of is still written).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Child;

use crate::sys::{self, Received};

/// The file of segment `index` of the log in `dir`: the name the log writes and reads it by (`log.rs`), and the
/// mover makes the first one by, with the log's directory.
pub(super) fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:08}"))
}

/// The hidden subcommand that runs the helper (`runnel __segments STATE`).
pub const SEGMENT_MOVER_COMMAND: &str = "__segments";

/// What the loop asks of the helper.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Make the segment file `target` (which must not exist): the spare `spare` renamed there, or a new file;
    /// the reply carries it open for writing.
    Prepare { target: PathBuf, spare: Option<PathBuf> },
    /// Rename `from` to `to`.
    Move { from: PathBuf, to: PathBuf },
    /// Close the segment file sent with the request, cut to `cut_to` bytes first if given. A writer's last close
    /// waits for the file's block allocation under writeback (ext4 drops its preallocations then), and a cut
    /// frees blocks: 25–30 ms on the loop under floods.
    Close { cut_to: Option<u64> },
    /// Make the directories `output` and `work` (private to the server; the job's init gives `work` to the
    /// job's user) and the output's first segment file, empty; the reply carries that file open for writing.
    /// All of them or, failing, none.
    MakeJobDirs { output: PathBuf, work: PathBuf },
    /// Write a job's record, `bytes`, into its directory `dir` (`jobs::record::store`); the bytes come in a
    /// file sent with the request instead when they are more than one message should carry (`bytes` empty).
    WriteRecord { dir: PathBuf, bytes: Vec<u8> },
}

/// The helper's answer to the request with ticket `ticket`.
#[derive(Debug)]
pub struct Reply {
    pub ticket: u64,
    /// The prepared file (none for a move), or why the request failed.
    pub outcome: Result<Option<File>, String>,
}

/// How long the server, stopping, waits for the mover's last replies before it stops without them.
pub const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

const PREPARE: u8 = b'P';
const MOVE: u8 = b'M';
const CLOSE: u8 = b'C';
const JOB_DIRS: u8 = b'J';
const RECORD: u8 = b'R';

impl Request {
    /// `kind, ticket (8 bytes LE)`, then for a prepare or a move `first path, NUL, second path` (an empty second
    /// path: a new file), for a job's directories `output, NUL, work`, for a record
    /// `dir, NUL, bytes`, for a close the length to cut to (8 bytes LE) if any.
    fn encode(&self, ticket: u64) -> Vec<u8> {
        let (kind, first, second) = match self {
            Request::WriteRecord { dir, bytes } => {
                let mut message = vec![RECORD];
                message.extend_from_slice(&ticket.to_le_bytes());
                message.extend_from_slice(dir.as_os_str().as_bytes());
                message.push(0);
                message.extend_from_slice(bytes);
                return message;
            }
            Request::MakeJobDirs { output, work } => (JOB_DIRS, output, work.as_path()),
            Request::Prepare { target, spare } => (PREPARE, target, spare.as_deref().unwrap_or(Path::new(""))),
            Request::Move { from, to } => (MOVE, from, to.as_path()),
            Request::Close { cut_to } => {
                let mut message = vec![CLOSE];
                message.extend_from_slice(&ticket.to_le_bytes());
                message.extend(cut_to.iter().flat_map(|len| len.to_le_bytes()));
                return message;
            }
        };
        let mut message = vec![kind];
        message.extend_from_slice(&ticket.to_le_bytes());
        message.extend_from_slice(first.as_os_str().as_bytes());
        message.push(0);
        message.extend_from_slice(second.as_os_str().as_bytes());
        message
    }

    fn decode(message: &[u8]) -> Option<(u64, Request)> {
        let (&kind, rest) = message.split_first()?;
        let (ticket, paths) = rest.split_at_checked(8)?;
        let ticket = u64::from_le_bytes(ticket.try_into().ok()?);
        if kind == CLOSE {
            let cut_to = match paths.len() {
                0 => None,
                8 => Some(u64::from_le_bytes(paths.try_into().ok()?)),
                _ => return None,
            };
            return Some((ticket, Request::Close { cut_to }));
        }
        let path = |bytes: &[u8]| PathBuf::from(OsString::from_vec(bytes.to_vec()));
        if kind == RECORD {
            // The bytes may hold NULs: only the first one ends the path.
            let (dir, bytes) = paths.split_at(paths.iter().position(|&b| b == 0)?);
            let bytes = bytes.get(1..)?.to_vec();
            return (!dir.is_empty()).then(|| (ticket, Request::WriteRecord { dir: path(dir), bytes }));
        }
        let mut paths = paths.split(|&b| b == 0);
        let (first, second) = (paths.next()?, paths.next()?);
        if paths.next().is_some() || first.is_empty() {
            return None;
        }
        let request = match kind {
            JOB_DIRS if !second.is_empty() => Request::MakeJobDirs { output: path(first), work: path(second) },
            PREPARE => Request::Prepare { target: path(first), spare: (!second.is_empty()).then(|| path(second)) },
            MOVE if !second.is_empty() => Request::Move { from: path(first), to: path(second) },
            _ => return None,
        };
        Some((ticket, request))
    }
}

/// The server's side of the helper.
#[derive(Debug)]
pub struct SegmentMover {
    /// `None` for a helper served by a test's thread.
    process: Option<Child>,
    /// The server's end, non-blocking.
    socket: OwnedFd,
    next_ticket: u64,
    /// Requests the socket had no room for, in the order asked, each with the file it carries.
    unsent: VecDeque<(Vec<u8>, Option<File>)>,
}

impl SegmentMover {
    /// Starts the helper from `executable` (the server's own) for the state directory `state_dir`.
    pub fn start(
        executable: &Path,
        state_dir: &Path,
        state_dir_lock: Option<BorrowedFd<'_>>,
    ) -> io::Result<SegmentMover> {
        let (socket, helper_end) = sys::seqpacket_pair()?;
        let args = [SEGMENT_MOVER_COMMAND.as_ref(), state_dir.as_os_str()];
        // What the server sent it is written even if the server is killed (a job's end, output a client saw).
        let at_death = sys::AtServerDeath::FinishesWhatItWasSent;
        let process = sys::spawn_helper(executable, &args, helper_end, state_dir_lock, at_death)?;
        log::info!("segment mover started: pid {}, making and moving spool files", process.id());
        Ok(SegmentMover { process: Some(process), socket, next_ticket: 0, unsent: VecDeque::new() })
    }

    /// A mover whose helper is `serve` run by the caller (a test's thread) on the returned socket.
    #[cfg(test)]
    pub fn with_socket_pair() -> (SegmentMover, OwnedFd) {
        let (socket, helper_end) = sys::seqpacket_pair().unwrap();
        (SegmentMover { process: None, socket, next_ticket: 0, unsent: VecDeque::new() }, helper_end)
    }

    /// Sends `request` (with `file`: the file a close is for, a record's memory file) without waiting, after
    /// those still waiting for room: its ticket; an error when the helper is gone.
    pub fn send(&mut self, request: &Request, file: Option<File>) -> io::Result<u64> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unsent.push_back((request.encode(ticket), file));
        self.send_unsent()?;
        Ok(ticket)
    }

    /// Sends the requests that waited for room, in order, until the socket is full again.
    pub fn send_unsent(&mut self) -> io::Result<()> {
        while let Some((message, file)) = self.unsent.front() {
            let fds: Vec<_> = file.iter().map(|f| f.as_raw_fd()).collect();
            if !sys::send_with_descriptors(self.socket.as_raw_fd(), message, &fds)? {
                return Ok(());
            }
            // The file goes with the message: the helper holds it now.
            self.unsent.pop_front();
        }
        Ok(())
    }

    /// True while requests wait for room in the socket (the loop knows it from what awaits an answer).
    #[cfg(test)]
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Sends every request still waiting, waiting for room until `deadline` (at shutdown), and hands
    /// `on_reply` the replies that come meanwhile (a helper whose replies are not taken stops taking requests);
    /// false if the helper did not make room in time.
    pub fn send_all_unsent(
        &mut self,
        deadline: std::time::Instant,
        mut on_reply: impl FnMut(Reply),
    ) -> io::Result<bool> {
        loop {
            self.send_unsent()?;
            if self.unsent.is_empty() {
                return Ok(true);
            }
            while let Some(reply) = self.receive()? {
                on_reply(reply);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis();
            if !sys::wait_readable_or_writable(self.socket.as_raw_fd(), i32::try_from(left).unwrap_or(i32::MAX))? {
                return Ok(false);
            }
        }
    }

    /// The socket its replies come on, for the reactor to watch.
    pub fn socket(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// The next reply, if one came; an error when the helper is gone or sent what it never sends.
    pub fn receive(&mut self) -> io::Result<Option<Reply>> {
        match sys::receive_with_descriptors(self.socket.as_raw_fd(), false)? {
            Received::Empty => Ok(None),
            Received::Closed => Err(io::Error::new(io::ErrorKind::BrokenPipe, "the segment mover closed its socket")),
            Received::Message { bytes, mut fds } => {
                let malformed = || io::Error::new(io::ErrorKind::InvalidData, "a reply the segment mover never sends");
                let (ticket, status) = bytes.split_at_checked(8).ok_or_else(malformed)?;
                let ticket = u64::from_le_bytes(ticket.try_into().map_err(|_| malformed())?);
                let outcome = match status.split_first() {
                    Some((0, _)) if fds.len() <= 1 => Ok(fds.pop().map(File::from)),
                    Some((1, message)) if fds.is_empty() => Err(String::from_utf8_lossy(message).into_owned()),
                    _ => return Err(malformed()),
                };
                Ok(Some(Reply { ticket, outcome }))
            }
        }
    }

    /// The next reply, waiting for it until `deadline`: at shutdown (after [`Self::close_requests`]).
    pub fn receive_waiting(&mut self, deadline: std::time::Instant) -> io::Result<Option<Reply>> {
        let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis();
        if !sys::wait_readable(self.socket.as_raw_fd(), i32::try_from(left).unwrap_or(i32::MAX))? {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the segment mover did not answer"));
        }
        self.receive()
    }

    /// Stops sending; the helper serves what it was sent and ends. The replies still come: take them with
    /// [`Self::receive_waiting`] until it errs, then call [`Self::reap`].
    pub fn close_requests(&self) {
        if let Err(err) = sys::shut_down_sending(self.socket.as_raw_fd()) {
            log::debug!("cannot shut down the segment mover's socket: {err}");
        }
    }

    /// Kills the helper, so that nothing still queued for it is carried out, without waiting for it (it may be
    /// waiting for the disk; it is reaped when the server exits).
    pub fn kill(mut self) {
        if let Some(process) = self.process.as_mut() {
            if let Err(err) = process.kill() {
                log::debug!("cannot kill the segment mover: {err}");
            }
        }
    }

    /// Waits for the helper process to end (after [`Self::close_requests`], or once it is gone).
    pub fn reap(mut self) {
        let Some(process) = self.process.take() else { return };
        drop(self.socket);
        sys::reap_helper(process, "segment mover");
    }
}

/// Serves requests arriving on `socket` for files under `root` until the server closes it.
pub fn serve(socket: &OwnedFd, root: &Path) {
    while serve_one(socket, root, true) {}
}

/// Serves the requests already queued on `socket`, without waiting for more: a test's stand-in for the helper
/// process, on the test's own thread.
#[cfg(test)]
pub fn serve_queued(socket: &OwnedFd, root: &Path) {
    while serve_one(socket, root, false) {}
}

/// Serves one request (`wait`: for one to come); false once there is none to serve, or the server is gone.
fn serve_one(socket: &OwnedFd, root: &Path, wait: bool) -> bool {
    let (message, fds) = match sys::receive_with_descriptors(socket.as_raw_fd(), wait) {
        Ok(Received::Message { bytes, fds }) => (bytes, fds),
        Ok(Received::Empty) => return wait,
        Ok(Received::Closed) => return false,
        // The server died with replies unread: the kernel says so once, before the requests it had sent, which
        // are still carried out (see `sys::AtServerDeath`); then comes the end.
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return true,
        Err(err) => {
            eprintln!("runnel segment mover: cannot read the server's requests: {err}");
            return false;
        }
    };
    let Some((ticket, request)) = Request::decode(&message) else {
        eprintln!("runnel segment mover: ignoring a request it cannot read");
        return true;
    };
    let outcome = carry_out(&request, root, fds);
    let mut reply = ticket.to_le_bytes().to_vec();
    let fds = match &outcome {
        Ok(file) => {
            reply.push(0);
            file.iter().map(|f| f.as_raw_fd()).collect()
        }
        Err(err) => {
            reply.push(1);
            reply.extend_from_slice(err.to_string().as_bytes());
            Vec::new()
        }
    };
    // A server gone: nothing to tell, and the next receive ends the loop.
    let _ = sys::send_with_descriptors(socket.as_raw_fd(), &reply, &fds);
    true
}

/// Does what `request` asks, with `fds` the descriptors it came with (all closed by the end but a prepared file).
fn carry_out(request: &Request, root: &Path, fds: Vec<OwnedFd>) -> io::Result<Option<File>> {
    // Below the state directory, by plain names only (however the server spelled the directory itself).
    let inside = |path: &Path| {
        let below = path.strip_prefix(root).ok().filter(|below| {
            below.components().next().is_some() && below.components().all(|c| matches!(c, Component::Normal(_)))
        });
        match below {
            Some(_) => Ok(()),
            None => {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is not a spool file", path.display())))
            }
        }
    };
    match request {
        Request::Prepare { target, spare } => {
            inside(target)?;
            let file = match spare {
                Some(spare) => {
                    inside(spare)?;
                    // Opened before it moves (the descriptor follows the file), so a failure leaves nothing at
                    // `target`.
                    let file = OpenOptions::new().write(true).open(spare)?;
                    fs::rename(spare, target)?;
                    file
                }
                None => OpenOptions::new().create_new(true).write(true).mode(0o600).open(target)?,
            };
            Ok(Some(file))
        }
        Request::Move { from, to } => {
            inside(from)?;
            inside(to)?;
            fs::rename(from, to)?;
            Ok(None)
        }
        Request::MakeJobDirs { output, work } => {
            inside(output)?;
            inside(work)?;
            fs::DirBuilder::new().mode(0o700).create(output)?;
            // A failure here takes back what this request made (and nothing else: a directory that was there
            // already failed the first step), so the server has nothing to remove.
            let first_segment = segment_path(output, 0);
            let made = fs::DirBuilder::new().mode(0o700).create(work).and_then(|()| {
                let file = OpenOptions::new().create_new(true).write(true).mode(0o600).open(&first_segment);
                if file.is_err() {
                    let _ = fs::remove_dir(work);
                }
                file
            });
            if made.is_err() {
                let _ = fs::remove_dir(output);
            }
            made.map(Some)
        }
        Request::WriteRecord { dir, bytes } => {
            inside(dir)?;
            match <[OwnedFd; 1]>::try_from(fds) {
                // Sent in a file: read from its start (the server wrote it, moving the offset both share).
                Ok([fd]) => {
                    let mut file = File::from(fd);
                    let mut held = Vec::new();
                    file.seek(io::SeekFrom::Start(0))?;
                    file.read_to_end(&mut held)?;
                    crate::jobs::record::store(dir, &held)?;
                }
                Err(fds) if fds.is_empty() => crate::jobs::record::store(dir, bytes)?,
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "a record with more than one file")),
            }
            Ok(None)
        }
        Request::Close { cut_to } => {
            let Ok([fd]) = <[OwnedFd; 1]>::try_from(fds) else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "a close without exactly one file"));
            };
            let file = File::from(fd);
            if let Some(len) = cut_to {
                file.set_len(*len)?;
            }
            // The close is the point: the server's own descriptor is closed already.
            drop(file);
            Ok(None)
        }
    }
}

/// Runs the helper; never returns. `args` are those after `__segments`: the state directory.
pub fn main(args: Vec<OsString>) -> ! {
    let [root] = <[OsString; 1]>::try_from(args).unwrap_or_else(|_| {
        eprintln!("error: INVALID_ARGUMENT: `runnel {SEGMENT_MOVER_COMMAND}` is internal to the server");
        std::process::exit(2)
    });
    let socket = sys::helper_channel("runnel segment mover");
    serve(&socket, Path::new(&root));
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::os::unix::fs::{FileExt, PermissionsExt};

    #[test]
    fn requests_read_back_as_sent_and_nothing_else_reads_as_one() {
        let prepare = Request::Prepare { target: "/s/jobs/a/00000001".into(), spare: Some("/s/spare/00000003".into()) };
        let new = Request::Prepare { target: "/s/jobs/a/00000002".into(), spare: None };
        let moved = Request::Move { from: "/s/jobs/a/00000000".into(), to: "/s/trash/7".into() };
        let (close, cut) = (Request::Close { cut_to: None }, Request::Close { cut_to: Some(1 << 40) });
        let dirs = Request::MakeJobDirs { output: "/s/jobs/b".into(), work: "/s/work/b".into() };
        let record = Request::WriteRecord { dir: "/s/jobs/b".into(), bytes: b"RUNNELJR\0\x01\0".to_vec() };
        let in_a_file = Request::WriteRecord { dir: "/s/jobs/b".into(), bytes: Vec::new() };
        for (ticket, request) in
            [(1, prepare), (u64::MAX, new), (0, moved), (2, close), (3, cut), (4, dirs), (5, record), (6, in_a_file)]
        {
            assert_eq!(Request::decode(&request.encode(ticket)), Some((ticket, request)));
        }
        for garbage in [
            &b""[..],
            b"P",
            b"P12345678",
            b"M12345678/a\0",
            b"X12345678/a\0/b",
            b"P12345678/a\0/b\0/c",
            b"C12345678123",
            b"J12345678/a\0",
            b"J12345678\0/b",
            b"J12345678/a\0/b\0/c",
            b"R12345678/a",
            b"R12345678\0bytes",
        ] {
            assert_eq!(Request::decode(garbage), None, "{garbage:?}");
        }
    }

    fn deadline() -> std::time::Instant {
        std::time::Instant::now() + SHUTDOWN_WAIT
    }

    /// A server killed with replies of the mover unread: the mover's next receive fails once (`ECONNRESET`),
    /// and the requests the server had sent are carried out after it all the same (see `sys::AtServerDeath`).
    #[test]
    fn the_helper_carries_out_what_a_dead_server_had_sent() {
        let scratch = ScratchDir::new("mover-orphaned");
        let root = scratch.join("state");
        fs::create_dir_all(root.join("jobs/a")).unwrap();
        let (mut mover, helper_end) = SegmentMover::with_socket_pair();
        let record = |bytes: &[u8]| Request::WriteRecord { dir: root.join("jobs/a"), bytes: bytes.to_vec() };
        mover.send(&record(b"started"), None).unwrap();
        serve_queued(&helper_end, &root);
        // Its reply stays unread; then the end of the job, and the server dies.
        mover.send(&record(b"started, and ended"), None).unwrap();
        drop(mover);
        serve(&helper_end, &root);
        assert_eq!(fs::read(root.join("jobs/a/record")).unwrap(), b"started, and ended");
    }

    #[test]
    fn the_helper_makes_jobs_directories_and_writes_records_under_its_root_only() {
        let scratch = ScratchDir::new("mover-dirs");
        let root = scratch.join("state");
        fs::create_dir_all(root.join("jobs")).unwrap();
        fs::create_dir_all(root.join("work")).unwrap();
        let (mut mover, helper_end) = SegmentMover::with_socket_pair();
        let dirs = |name: &str| Request::MakeJobDirs {
            output: root.join("jobs").join(name),
            work: root.join("work").join(name),
        };
        let record = |name: &str, bytes: &[u8]| Request::WriteRecord {
            dir: root.join("jobs").join(name),
            bytes: bytes.to_vec(),
        };
        let requests = [
            dirs("a"),
            dirs("a"),
            Request::MakeJobDirs { output: root.join("jobs/c"), work: scratch.join("outside") },
            dirs("d"),
            record("a", b"first"),
            record("a", b"second, longer"),
            record("gone", b"nowhere"),
            Request::WriteRecord { dir: scratch.path().to_path_buf(), bytes: b"outside".to_vec() },
        ];
        // A working directory that is there already, and someone's: the request fails and takes back only what
        // it made.
        fs::create_dir_all(root.join("work/d")).unwrap();
        fs::write(root.join("work/d/kept"), b"").unwrap();
        let mut tickets: Vec<u64> = requests.iter().map(|r| mover.send(r, None).unwrap()).collect();
        // A record too large for a message comes in a memory file, its offset at the end where it was written.
        let large = vec![b'x'; 100_000];
        let file = sys::memory_file(c"test-record", &large).unwrap();
        tickets.push(mover.send(&record("d2", b""), Some(file.try_clone().unwrap())).unwrap());
        tickets.push(mover.send(&dirs("d2"), None).unwrap());
        tickets.push(mover.send(&record("d2", b""), Some(file)).unwrap());
        mover.close_requests();
        serve(&helper_end, &root);
        let replies: Vec<Reply> = tickets.iter().map(|_| mover.receive_waiting(deadline()).unwrap().unwrap()).collect();
        assert_eq!(replies.iter().map(|r| r.ticket).collect::<Vec<_>>(), tickets, "served in order");

        for dir in [root.join("jobs/a"), root.join("work/a")] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{} is the server's alone", dir.display());
        }
        // With the output's first segment file, empty, sent back open for writing.
        let first_segment = replies[0].outcome.as_ref().unwrap().as_ref().expect("the first segment's file");
        let path = segment_path(&root.join("jobs/a"), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "the server's alone");
        std::os::unix::fs::FileExt::write_at(first_segment, b"header", 0).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"header", "the file at that path");
        assert!(replies[1].outcome.as_ref().unwrap_err().contains("exists"), "{:?}", replies[1].outcome);
        assert!(replies[2].outcome.as_ref().unwrap_err().contains("is not a spool file"), "{:?}", replies[2].outcome);
        assert!(!root.join("jobs/c").exists() && !scratch.join("outside").exists(), "nothing made when refused");
        assert!(replies[3].outcome.as_ref().unwrap_err().contains("exists"), "{:?}", replies[3].outcome);
        assert!(!root.join("jobs/d").exists(), "a failed request leaves nothing it made");
        assert!(root.join("work/d/kept").exists(), "nor removes what it did not make");

        assert!(replies[4].outcome.is_ok() && replies[5].outcome.is_ok());
        assert_eq!(fs::read(root.join("jobs/a/record")).unwrap(), b"second, longer", "written in the order asked");
        let mode = fs::metadata(root.join("jobs/a/record")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the server's alone");
        assert!(replies[6].outcome.as_ref().unwrap_err().contains("No such file"), "{:?}", replies[6].outcome);
        assert!(replies[7].outcome.as_ref().unwrap_err().contains("is not a spool file"), "{:?}", replies[7].outcome);
        assert!(!scratch.join("record").exists());
        assert!(replies[8].outcome.is_err() && replies[9].outcome.is_ok() && replies[10].outcome.is_ok());
        assert_eq!(fs::read(root.join("jobs/d2/record")).unwrap(), large, "read from the memory file's start");

        drop(helper_end);
        mover.reap();
    }

    #[test]
    fn the_helper_prepares_and_moves_files_under_its_root_only() {
        let scratch = ScratchDir::new("mover");
        let root = scratch.join("state");
        fs::create_dir_all(root.join("jobs/a")).unwrap();
        fs::create_dir_all(root.join("spare")).unwrap();
        fs::write(root.join("spare/00000000"), b"old bytes").unwrap();
        let (mut mover, helper_end) = SegmentMover::with_socket_pair();

        let requests = [
            Request::Prepare { target: root.join("jobs/a/00000000"), spare: Some(root.join("spare/00000000")) },
            Request::Prepare { target: root.join("jobs/a/00000001"), spare: None },
            Request::Prepare { target: root.join("jobs/a/00000001"), spare: None },
            Request::Move { from: root.join("jobs/a/00000001"), to: root.join("spare/00000001") },
            Request::Move { from: root.join("jobs/a/00000000"), to: scratch.join("outside") },
            Request::Prepare { target: root.join("jobs/../../escape"), spare: None },
        ];
        let mut tickets: Vec<u64> = requests.iter().map(|r| mover.send(r, None).unwrap()).collect();
        // A file sent to be cut and closed; a close without one.
        let written = root.join("jobs/a/written");
        fs::write(&written, vec![7u8; 100_000]).unwrap();
        let file = OpenOptions::new().write(true).open(&written).unwrap();
        tickets.push(mover.send(&Request::Close { cut_to: Some(4096) }, Some(file)).unwrap());
        tickets.push(mover.send(&Request::Close { cut_to: None }, None).unwrap());
        // The helper, on this thread: it serves what was sent, and returns once the server stops sending.
        mover.close_requests();
        serve(&helper_end, &root);
        let mut replies: Vec<Reply> =
            tickets.iter().map(|_| mover.receive_waiting(deadline()).unwrap().unwrap()).collect();
        assert_eq!(replies.iter().map(|r| r.ticket).collect::<Vec<_>>(), tickets, "served in order");

        let taken = replies[0].outcome.as_mut().unwrap().take().unwrap();
        taken.write_all_at(b"new", 0).unwrap();
        assert_eq!(fs::read(root.join("jobs/a/00000000")).unwrap(), b"new bytes", "the spare, open, in place");
        assert!(!root.join("spare/00000000").exists());
        assert!(replies[1].outcome.as_ref().unwrap().is_some(), "a new file");
        assert!(replies[2].outcome.as_ref().unwrap_err().contains("exists"), "{:?}", replies[2].outcome);
        assert!(replies[3].outcome.as_ref().unwrap().is_none() && root.join("spare/00000001").exists());
        for refused in &replies[4..6] {
            assert!(refused.outcome.as_ref().unwrap_err().contains("is not a spool file"), "{:?}", refused.outcome);
        }
        assert!(root.join("jobs/a/00000000").exists() && !scratch.join("outside").exists());
        assert!(replies[6].outcome.as_ref().unwrap().is_none() && fs::metadata(&written).unwrap().len() == 4096);
        assert!(replies[7].outcome.as_ref().unwrap_err().contains("exactly one file"), "{:?}", replies[7].outcome);

        drop(helper_end);
        assert!(mover.receive_waiting(deadline()).is_err(), "its socket closed, the mover is gone");
        mover.reap();
    }
}
