//! One client connection: TLS handshake, then the HTTP/2 handshake, then serving calls until either side ends.
//!
//! The connection is a task of its own (polled when its socket is ready or h2 has frames to write); each call
//! on it is a separate task. The client's identity is read once, from its verified certificate, when the TLS
//! handshake completes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpStream;
use rustls::ServerConnection;

use super::admission::{Admission, ConnectionCap};
use super::call::{Call, RequestBudget};
use super::rejections::{Rejection, RejectionLog};
use super::wire::CallError;
use crate::grpc;
use crate::jobs::Caller;
use crate::pki;
use crate::reactor::{TaskId, WakeQueue};
use crate::tls::TlsStream;

type Transport = TlsStream<ServerConnection>;

/// Bytes read from a client socket at once: a server mostly sends, and receives small requests and window
/// updates.
const RECV_BUFFER: usize = 8 * 1024;

enum Phase {
    Tls(Box<Transport>),
    H2Handshake(Box<h2::server::Handshake<Transport, Bytes>>),
    Serving(Box<h2::server::Connection<Transport, Bytes>>),
    /// Over; also the state for the instant the transport moves from one phase to the next.
    Closed,
}

/// Settings every connection shares.
pub struct ConnectionSettings {
    pub h2: h2::server::Builder,
    pub admins: Vec<String>,
}

pub struct Connection {
    pub id: u64,
    /// The client's address and port (unfinished handshakes are capped per address).
    pub peer: std::net::SocketAddr,
    phase: Phase,
    /// The client's identity, or why it has none.
    caller: Result<Caller, String>,
    /// Counted among the established connections ([`Admission`]); given back when the connection closes.
    admitted: bool,
    /// The cap this connection is over: every call on it is refused, and it closes.
    refusal: Option<ConnectionCap>,
    /// Counted among the connections turned away (under its first reason: see [`RejectionLog::reject`]).
    pub rejected: bool,
    pub calls: HashMap<u64, Call>,
    /// What the calls hold of requests still arriving.
    pub requests: RequestBudget,
    next_call: u64,
    pub last_active: Instant,
    going_away: bool,
    /// This connection's own task waker, made once.
    pub waker: Waker,
}

/// What polling a connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Open,
    Closed,
}

impl Connection {
    pub fn new(id: u64, peer: std::net::SocketAddr, socket: TcpStream, tls: ServerConnection, waker: Waker) -> Self {
        Connection {
            id,
            peer,
            phase: Phase::Tls(Box::new(TlsStream::new(socket, tls, RECV_BUFFER))),
            caller: Err("no identity yet".into()),
            admitted: false,
            refusal: None,
            rejected: false,
            calls: HashMap::new(),
            requests: RequestBudget::default(),
            next_call: 1,
            last_active: Instant::now(),
            going_away: false,
            waker,
        }
    }

    /// Still in the TLS or HTTP/2 handshake.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.phase, Phase::Serving(_))
    }

    /// Holds one of the slots for unfinished handshakes: still handshaking, or refused and about to close.
    pub fn holds_handshake_slot(&self) -> bool {
        self.is_handshaking() || self.refusal.is_some()
    }

    /// The identity this connection was admitted with, to give back when it closes; `None` if it was not.
    pub fn admitted_as(&self) -> Option<&Result<Caller, String>> {
        self.admitted.then_some(&self.caller)
    }

    /// Starts a graceful close: GOAWAY now, the connection ends once its calls have.
    pub fn go_away(&mut self) {
        self.going_away = true;
        if let Phase::Serving(h2) = &mut self.phase {
            h2.graceful_shutdown();
        }
    }

    /// Drives the connection: handshakes, then accepting new calls (which also moves h2's I/O). New calls
    /// are created here and woken so the loop polls them next; those with a `grpc-timeout` are added to
    /// `deadlines` for the loop to time.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        settings: &ConnectionSettings,
        (admission, rejections): (&mut Admission, &mut RejectionLog),
        queue: &Arc<WakeQueue>,
        deadlines: &mut Vec<(TaskId, Duration)>,
    ) -> ConnectionState {
        loop {
            match &mut self.phase {
                Phase::Tls(transport) => match transport.drive_handshake() {
                    Ok(true) => {
                        self.caller = identity(transport, &settings.admins);
                        if let Err(reason) = &self.caller {
                            // Its calls are answered UNAUTHENTICATED with the reason; none can act.
                            rejections.reject(
                                &mut self.rejected,
                                Rejection::NoIdentity,
                                Some(format_args!("connection from {}: refused: {reason}", self.peer)),
                            );
                        }
                        match admission.admit(&self.caller) {
                            Ok(()) => self.admitted = true,
                            Err(cap) => {
                                // Its first call is answered with why, then it goes away; the handshake deadline
                                // closes it if no call comes.
                                rejections.reject(
                                    &mut self.rejected,
                                    Rejection::OverCap,
                                    Some(format_args!("connection from {}: refused: {cap}", self.peer)),
                                );
                                self.refusal = Some(cap);
                            }
                        }
                        log::debug!(
                            "connection {}: TLS established ({:?})",
                            self.id,
                            transport.tls.negotiated_cipher_suite().map(|s| s.suite())
                        );
                        let Phase::Tls(transport) = std::mem::replace(&mut self.phase, Phase::Closed) else {
                            unreachable!("matched above")
                        };
                        self.phase = Phase::H2Handshake(Box::new(settings.h2.handshake(*transport)));
                    }
                    Ok(false) => return ConnectionState::Open,
                    // A connection closed before its handshake ended is a port check (a load balancer's, an
                    // orchestrator's readiness probe) or a client giving up: nothing an operator must hear of.
                    Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                        log::debug!("connection {} from {}: closed during the TLS handshake", self.id, self.peer);
                        rejections.reject(&mut self.rejected, Rejection::ClosedDuringHandshake, None);
                        return ConnectionState::Closed;
                    }
                    Err(err) => {
                        rejections.reject(
                            &mut self.rejected,
                            Rejection::TlsFailed,
                            Some(format_args!("connection from {}: TLS handshake failed: {err}", self.peer)),
                        );
                        return ConnectionState::Closed;
                    }
                },
                Phase::H2Handshake(handshake) => match Pin::new(&mut **handshake).poll(cx) {
                    Poll::Ready(Ok(h2)) => {
                        self.phase = Phase::Serving(Box::new(h2));
                        if self.going_away {
                            self.go_away();
                        }
                    }
                    Poll::Ready(Err(err)) => {
                        log::debug!("connection {}: HTTP/2 handshake failed: {err}", self.id);
                        rejections.reject(&mut self.rejected, Rejection::Http2Failed, None);
                        return ConnectionState::Closed;
                    }
                    Poll::Pending => return ConnectionState::Open,
                },
                Phase::Serving(h2) => loop {
                    match h2.poll_accept(cx) {
                        Poll::Ready(Some(Ok((request, respond)))) => {
                            let call_id = self.next_call;
                            self.next_call += 1;
                            let task = TaskId { connection: self.id, call: call_id };
                            let path = request.uri().path().to_string();
                            let timeout =
                                request.headers().get(grpc::TIMEOUT).map(|v| grpc::parse_timeout(v.as_bytes()));
                            let waker = queue.waker(task);
                            let mut call =
                                Call::new(&path, self.peer, self.caller.clone(), request.into_body(), respond, waker);
                            match timeout {
                                None => {}
                                Some(Some(timeout)) => deadlines.push((task, timeout)),
                                Some(None) => call.refuse(CallError::MalformedTimeout),
                            }
                            if let Some(cap) = &self.refusal {
                                call.refuse(CallError::OverConnectionCap(cap.clone()));
                                self.going_away = true;
                                h2.graceful_shutdown();
                            } else {
                                call.admit(admission);
                            }
                            call.waker.wake_by_ref();
                            self.calls.insert(call_id, call);
                            self.last_active = Instant::now();
                        }
                        Poll::Ready(Some(Err(err))) => {
                            log::debug!("connection {}: {err}", self.id);
                            return ConnectionState::Closed;
                        }
                        Poll::Ready(None) => return ConnectionState::Closed,
                        Poll::Pending => return ConnectionState::Open,
                    }
                },
                Phase::Closed => return ConnectionState::Closed,
            }
        }
    }
}

/// The caller's identity from its verified certificate (see [`pki::identity_from_cert_der`]), or why it has
/// none.
fn identity(transport: &Transport, admins: &[String]) -> Result<Caller, String> {
    let certificate =
        transport.tls.peer_certificates().and_then(|chain| chain.first()).ok_or("no client certificate")?;
    let identity = pki::identity_from_cert_der(certificate.as_ref())
        .map_err(|e| format!("the client certificate names no identity: {e}"))?;
    Ok(Caller { admin: admins.contains(&identity), identity })
}
