//! The metrics endpoint (`--metrics-listen`): plain HTTP/1.1 `GET /metrics` on a listener of its own, served
//! by the same loop as everything else.
//!
//! A monitoring system connects, sends one request, reads one response, and the connection closes
//! (`Connection: close`): that is all Prometheus needs, and it keeps an exchange a small state machine
//! ([`Stage`]: read the head, write the response, drain until the client closes). Nothing a client of this port does can hold the loop or its memory: the request head is read
//! up to [`MAX_HEAD`] bytes, an exchange has [`EXCHANGE_TIMEOUT`] from accept to its last byte written, and at
//! most [`MAX_EXCHANGES`] are open at once (a new one closes the oldest, so a flood of silent sockets cannot
//! lock a scraper out). The response is rendered whole (tens of KiB) and written as the socket takes it.
//!
//! The endpoint is unauthenticated, like every Prometheus exporter's, and loopback unless an address says
//! otherwise. It shows counts only: no identity, job id, command or client input ever becomes a label.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use super::source::Source;

/// Longest request head read; a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Exchanges open at once; past it, a new connection closes the oldest.
pub const MAX_EXCHANGES: usize = 16;
/// Time from accept to the last byte of the response.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a complete request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (or `HEAD`: the same headers, no body).
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    Malformed,
    HeadTooLarge,
}

/// Reads a request head: `None` until it is complete (an empty line ends it). Only the request line matters;
/// the headers are skipped.
pub fn parse_request(head: &[u8]) -> Option<Request> {
    if !ends_a_head(head) {
        return (head.len() >= MAX_HEAD).then_some(Request::HeadTooLarge);
    }
    let line_end = find(head, b"\n").unwrap_or(head.len());
    let line = head.get(..line_end).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|byte| *byte == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::Malformed);
    };
    if !version.starts_with(b"HTTP/1.") {
        return Some(Request::Malformed);
    }
    let path = target.split(|byte| *byte == b'?').next().unwrap_or_default();
    Some(match (method, path) {
        (b"GET", b"/metrics") => Request::Metrics { head_only: false },
        (b"HEAD", b"/metrics") => Request::Metrics { head_only: true },
        (_, b"/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    })
}

/// Whether `bytes` hold the empty line that ends a request head (CRLF CRLF, or a bare LF LF).
fn ends_a_head(bytes: &[u8]) -> bool {
    find(bytes, b"\n\n").is_some() || find(bytes, b"\n\r\n").is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The whole response to `request`, with `metrics` as the body of a metrics request.
pub fn response(request: Request, metrics: &str) -> Vec<u8> {
    let (status, body) = match request {
        Request::Metrics { .. } => ("200 OK", metrics),
        Request::NotFound => ("404 Not Found", "runnel serves metrics at GET /metrics\n"),
        Request::MethodNotAllowed => ("405 Method Not Allowed", "only GET /metrics is served\n"),
        Request::Malformed => ("400 Bad Request", "not an HTTP/1 request\n"),
        Request::HeadTooLarge => ("431 Request Header Fields Too Large", "request head over 8 KiB\n"),
    };
    let content_type = match request {
        Request::Metrics { .. } => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let allow = if request == Request::MethodNotAllowed { "Allow: GET, HEAD\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if request != (Request::Metrics { head_only: true }) {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// One scraper's connection.
struct Exchange {
    socket: TcpStream,
    stage: Stage,
}

enum Stage {
    /// Reading the request head, up to [`MAX_HEAD`] bytes.
    Reading { head: Vec<u8> },
    /// Writing the response: `written` bytes of it so far.
    Writing { response: Vec<u8>, written: usize },
    /// The response is written and our side shut: what the client still sends is read and dropped until it
    /// closes, because closing with unread input would reset the connection and could lose the response.
    Draining,
}

/// What became of an exchange after its socket was ready.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still reading, writing or draining.
    Open,
    /// The request is complete: answer it with [`MetricsEndpoint::respond`].
    Complete(Request),
    /// Over (answered, failed or gone): it was closed.
    Closed,
}

/// The listener and its open exchanges.
pub struct MetricsEndpoint {
    listener: TcpListener,
    exchanges: BTreeMap<u64, Exchange>,
    next_id: u64,
}

impl MetricsEndpoint {
    pub fn bind(address: SocketAddr, registry: &Registry) -> io::Result<MetricsEndpoint> {
        let mut listener = TcpListener::bind(address)?;
        registry.register(&mut listener, Source::MetricsListener.token(), Interest::READABLE)?;
        Ok(MetricsEndpoint { listener, exchanges: BTreeMap::new(), next_id: 1 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts every waiting connection; returns the new exchanges' ids, for the loop to time each.
    pub fn accept(&mut self, registry: &Registry) -> Vec<u64> {
        let mut accepted = Vec::new();
        loop {
            let mut socket = match self.listener.accept() {
                Ok((socket, _)) => socket,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return accepted,
                Err(err) => {
                    log::warn!("metrics endpoint: accept failed: {err}");
                    return accepted;
                }
            };
            if self.exchanges.len() >= MAX_EXCHANGES {
                // The oldest still reading its request: one being answered is left to finish.
                let reading = self.exchanges.iter().find(|(_, e)| matches!(e.stage, Stage::Reading { .. }));
                if let Some(oldest) = reading.or(self.exchanges.iter().next()).map(|(id, _)| *id) {
                    log::debug!("metrics exchange {oldest}: closed to make room for a new one");
                    self.exchanges.remove(&oldest);
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(err) = registry.register(&mut socket, Source::MetricsExchange(id).token(), interest) {
                log::warn!("metrics endpoint: cannot watch a connection: {err}");
                continue;
            }
            self.exchanges.insert(id, Exchange { socket, stage: Stage::Reading { head: Vec::new() } });
            accepted.push(id);
        }
    }

    /// Moves exchange `id` on after its socket was ready: reads the request head, or writes the response.
    pub fn ready(&mut self, id: u64) -> Progress {
        let Some(exchange) = self.exchanges.get_mut(&id) else { return Progress::Closed };
        let progress = match &mut exchange.stage {
            Stage::Reading { head } => read_head(&mut exchange.socket, head),
            Stage::Writing { response, written } => match write_response(&mut exchange.socket, response, written) {
                Written::Partly => Progress::Open,
                Written::Failed => Progress::Closed,
                Written::All => {
                    // Shut our side, then read until the client closes.
                    let _ = exchange.socket.shutdown(Shutdown::Write);
                    exchange.stage = Stage::Draining;
                    drain(&mut exchange.socket)
                }
            },
            Stage::Draining => drain(&mut exchange.socket),
        };
        if progress == Progress::Closed {
            self.close(id);
        }
        progress
    }

    /// Answers exchange `id` with `response`, writing what the socket takes now.
    pub fn respond(&mut self, id: u64, response: Vec<u8>) {
        if let Some(exchange) = self.exchanges.get_mut(&id) {
            exchange.stage = Stage::Writing { response, written: 0 };
            self.ready(id);
        }
    }

    /// Drops exchange `id` (its deadline passed, or it is over).
    pub fn close(&mut self, id: u64) {
        self.exchanges.remove(&id);
    }
}

fn read_head(socket: &mut TcpStream, head: &mut Vec<u8>) -> Progress {
    let mut buffer = [0u8; 1024];
    loop {
        let room = MAX_HEAD.saturating_sub(head.len()).min(buffer.len());
        let Some(chunk) = buffer.get_mut(..room) else { return Progress::Closed };
        match socket.read(chunk) {
            Ok(0) => return Progress::Closed,
            Ok(n) => {
                // Only the new bytes (and the three before them) can complete the empty line that ends the head,
                // so a head sent a byte at a time is not scanned again for each byte.
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if ends_a_head(head.get(from..).unwrap_or_default()) || head.len() >= MAX_HEAD {
                    if let Some(request) = parse_request(head) {
                        return Progress::Complete(request);
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Progress::Closed,
        }
    }
}

enum Written {
    All,
    /// The socket takes no more for now.
    Partly,
    Failed,
}

/// Writes what the socket takes of the response after its first `written` bytes.
fn write_response(socket: &mut TcpStream, response: &[u8], written: &mut usize) -> Written {
    while let Some(rest) = response.get(*written..).filter(|rest| !rest.is_empty()) {
        match socket.write(rest) {
            Ok(0) => return Written::Failed,
            Ok(n) => *written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Written::Partly,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Written::Failed,
        }
    }
    Written::All
}

/// Reads and drops what the client sends until it closes (`Closed`) or has nothing more for now (`Open`).
fn drain(socket: &mut TcpStream) -> Progress {
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => return Progress::Closed,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Progress::Open,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Progress::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_read_whole_and_only_get_metrics_is_served() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: localhost:9464\r\nAccept: text/plain\r\n\r\n";
        for end in 0..get.len() {
            assert_eq!(parse_request(&get[..end]), None, "incomplete at {end}");
        }
        assert_eq!(parse_request(get), Some(Request::Metrics { head_only: false }));
        assert_eq!(parse_request(b"GET /metrics?x=1 HTTP/1.0\n\n"), Some(Request::Metrics { head_only: false }));
        assert_eq!(parse_request(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Some(Request::Metrics { head_only: true }));
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::MethodNotAllowed));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(parse_request(b"\x16\x03\x01 tls hello\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(parse_request(b"PRI * HTTP/2.0\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(parse_request(&[b'a'; MAX_HEAD - 1]), None);
        assert_eq!(parse_request(&[b'a'; MAX_HEAD]), Some(Request::HeadTooLarge));
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let ok = String::from_utf8(response(Request::Metrics { head_only: false }, "a 1\n")).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("Content-Length: 4\r\n") && ok.contains("Connection: close\r\n"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        let head = String::from_utf8(response(Request::Metrics { head_only: true }, "a 1\n")).unwrap();
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"), "HEAD: headers only");
        let refused = String::from_utf8(response(Request::MethodNotAllowed, "a 1\n")).unwrap();
        assert!(refused.starts_with("HTTP/1.1 405 ") && refused.contains("Allow: GET, HEAD\r\n"));
        assert!(!refused.contains("a 1"), "metrics only for a metrics request");
    }
}
