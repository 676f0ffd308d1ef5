//! The client side of the API, used by the `client` subcommand and by the integration tests: one mutual-TLS
//! HTTP/2 connection, driven by a small blocking loop on mio, with the same transport and gRPC codec as the
//! server.
//!
//! Each method blocks until its answer arrives. Output streams are handles ([`ResponseStream`]) read one
//! message at a time, so a caller can hold several at once or stop reading one (dropping it cancels the call).

use std::future::{poll_fn, Future};
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::RecvStream;
use http::Request;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use prost::Message;
use rustls::ClientConnection;

use crate::grpc::{self, encode_message, Code, FramingError, MessageDecoder, Status};
use crate::sys;
use crate::tls::{self, KeySource, TlsStream};

type Transport = TlsStream<ClientConnection>;

const SOCKET: Token = Token(0);
const SIGNALS: Token = Token(1);

/// Time allowed to open the TCP connection and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive windows: large, so one output stream can run at full speed without waiting for window updates.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// Bytes read from the socket at once: a followed job's output arrives as fast as the server can send it.
const RECV_BUFFER: usize = 256 * 1024;
/// Largest frame we accept: fewer, larger frames cost less per byte than the 16 KiB default.
const MAX_FRAME: u32 = 1024 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub server: String,
    pub cert: PathBuf,
    pub key: KeySource,
    /// The CA the server's certificate must chain to; `None`: the pin alone (a self-signed server).
    pub ca: Option<PathBuf>,
    /// The server's certificate's fingerprint: connect only to it.
    pub server_pin: Option<tls::Fingerprint>,
    /// Name the server's certificate must carry; default: the host part of `server`.
    pub server_name: Option<String>,
}

/// A Ctrl-C arrived while waiting (only after [`Client::catch_interrupts`]).
#[derive(Debug)]
pub struct Interrupted;

/// Why a blocking call returned without its answer.
#[derive(Debug)]
pub enum CallError {
    Status(Status),
    Interrupted,
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        CallError::Status(status)
    }
}

pub struct Client {
    poll: mio::Poll,
    events: Events,
    connection: h2::client::Connection<Transport, Bytes>,
    connection_error: Option<String>,
    send: SendRequest<Bytes>,
    authority: String,
    woken: Arc<Flag>,
    waker: Waker,
    signals: Option<OwnedFd>,
}

/// A waker that only records that something woke us; the loop checks it before sleeping.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// A call whose request went out and whose answer is still to come.
pub struct PendingCall {
    response: h2::client::ResponseFuture,
    deadline: Option<Instant>,
}

/// An open server-streaming response, read with [`Client::next_message`].
pub struct ResponseStream {
    body: Option<RecvStream>,
    decoder: MessageDecoder,
    /// What the server said its version is (`runnel-server-version`), if it did.
    server_version: Option<String>,
    /// The call's deadline: reading its messages gives up then too, not only sending it and its headers.
    deadline: Option<Instant>,
}

impl ResponseStream {
    /// The version the server gave in the response's headers.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }
}

/// A response message the client refuses to take.
fn framing_status(err: FramingError) -> Status {
    let code = match err {
        FramingError::Compressed => Code::Unimplemented,
        FramingError::TooLarge { .. } => Code::ResourceExhausted,
    };
    Status::new(code, format!("the server's response: {err}"))
}

fn unavailable(message: String) -> Status {
    Status::new(Code::Unavailable, message)
}

/// What a TLS failure means for the user, in words they can act on, for the failures a misconfiguration
/// causes; `None` for the rest (their own message says enough). With TLS 1.3 the server judges the client's
/// certificate after the client has finished its handshake, so its refusal arrives as an alert on the first
/// read, which may be the HTTP/2 handshake's: h2 keeps only the text of such an error, from which the alert is
/// read back (rustls writes it `received fatal alert: NAME`).
fn explain_tls_failure(err: &io::Error) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError, Error};
    let inner = err.get_ref()?;
    let from_text;
    let tls = match inner.downcast_ref::<Error>() {
        Some(tls) => tls,
        None => {
            let name = inner.to_string().strip_prefix("received fatal alert: ")?.to_string();
            let alert = [
                Alert::CertificateRevoked,
                Alert::CertificateExpired,
                Alert::BadCertificate,
                Alert::UnknownCA,
                Alert::DecryptError,
                Alert::CertificateUnknown,
                Alert::CertificateRequired,
                Alert::AccessDenied,
            ]
            .into_iter()
            .find(|alert| format!("{alert:?}") == name)?;
            from_text = Error::AlertReceived(alert);
            &from_text
        }
    };
    let explained = match tls {
        Error::AlertReceived(Alert::CertificateRevoked) => {
            "the server did not accept this client certificate: its CA revoked it (--crl on the server)".to_string()
        }
        Error::AlertReceived(Alert::CertificateExpired) => {
            "the server did not accept this client certificate: it has expired; ask for a new one".to_string()
        }
        Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::DecryptError
            | Alert::CertificateUnknown
            | Alert::CertificateRequired
            | Alert::AccessDenied),
        ) => format!(
            "the server did not accept this client certificate (TLS alert {alert:?}): it is not signed by the \
             server's --client-ca (a different CA, even one with the same name, will not do), or the server \
             pins other client certificates; check --cert"
        ),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by the CA in --ca: pass the CA that signed it".to_string()
        }
        Error::InvalidCertificate(CertificateError::BadSignature) => "the server's certificate is not signed by \
            the CA in --ca: it names that CA, but another key signed it (two CAs with the same name?); pass the \
            CA that signed it"
            .to_string(),
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!("the server's certificate has expired ({tls})")
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("{tls}; connect by a name the certificate carries, or name one with --server-name"),
        _ => return None,
    };
    Some(explained)
}

fn status_from_h2(err: h2::Error) -> Status {
    if let Some(explained) = err.get_io().and_then(explain_tls_failure) {
        return unavailable(explained);
    }
    if let Some(reason) = err.reason() {
        if reason == h2::Reason::CANCEL {
            return Status::new(Code::Cancelled, "the call was cancelled");
        }
        if reason == h2::Reason::REFUSED_STREAM {
            return Status::unavailable("the server refused the call (it may be shutting down); retry");
        }
    }
    unavailable(format!("connection to the server failed: {err}"))
}

impl Client {
    /// Connects and completes the TLS and HTTP/2 handshakes.
    pub fn connect(settings: &ClientSettings) -> Result<Client, Status> {
        let config = tls::client_config(&settings.cert, &settings.key, settings.ca.as_deref(), settings.server_pin)
            .map_err(|e| Status::new(Code::FailedPrecondition, e.to_string()))?;
        let (host, address) = resolve(&settings.server)?;
        let name = settings.server_name.clone().unwrap_or(host);
        let server_name = tls::server_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let authority = request_authority(&name)?;
        let socket = StdTcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|e| {
            unavailable(format!("cannot connect to {}: {e} (is `runnel server` running there?)", settings.server))
        })?;
        socket.set_nodelay(true).ok();
        socket.set_nonblocking(true).map_err(|e| unavailable(format!("cannot configure the socket: {e}")))?;
        let mut socket = TcpStream::from_std(socket);
        let mut poll = mio::Poll::new().map_err(|e| unavailable(format!("cannot create an event loop: {e}")))?;
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| unavailable(format!("cannot watch the socket: {e}")))?;
        let tls = ClientConnection::new(config, server_name)
            .map_err(|e| Status::new(Code::FailedPrecondition, format!("cannot start TLS: {e}")))?;
        let mut transport = TlsStream::new(socket, tls, RECV_BUFFER);
        let mut events = Events::with_capacity(16);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match transport.drive_handshake() {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => {
                    let explained = explain_tls_failure(&err).unwrap_or_else(|| err.to_string());
                    return Err(unavailable(format!("TLS handshake with {} failed: {explained}", settings.server)));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(unavailable(format!("TLS handshake with {} timed out", settings.server)));
            }
            poll_once(&mut poll, &mut events, Some(left))?;
        }

        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(64 * 1024);
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&woken));
        let mut handshake = pin!(builder.handshake::<_, Bytes>(transport));
        let (send, mut connection) = loop {
            let mut cx = Context::from_waker(&waker);
            match handshake.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(pair)) => break pair,
                Poll::Ready(Err(err)) => return Err(status_from_h2(err)),
                Poll::Pending => {
                    if !woken.0.swap(false, Ordering::AcqRel) {
                        poll_once(&mut poll, &mut events, Some(CONNECT_TIMEOUT))?;
                    }
                }
            }
        };
        // The handshake only queued the preface and SETTINGS: send them now, so the server counts the connection
        // as established even if its first call comes much later (until then it holds one of the server's
        // slots for unfinished handshakes, and would be closed at the handshake deadline).
        if let Poll::Ready(Err(err)) = Pin::new(&mut connection).poll(&mut Context::from_waker(&waker)) {
            return Err(status_from_h2(err));
        }
        Ok(Client { poll, events, connection, connection_error: None, send, authority, woken, waker, signals: None })
    }

    /// From now on, SIGINT (Ctrl-C) interrupts a blocking call with [`CallError::Interrupted`] instead of
    /// killing the process.
    pub fn catch_interrupts(&mut self) -> io::Result<()> {
        let fd = sys::signalfd(&[libc::SIGINT])?;
        self.poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        self.signals = Some(fd);
        Ok(())
    }

    /// Runs `future` to completion while driving the connection. Gives up at `deadline` with
    /// DEADLINE_EXCEEDED, and on Ctrl-C if interrupts are caught.
    fn block_on<T>(
        &mut self,
        future: impl Future<Output = Result<T, Status>>,
        deadline: Option<Instant>,
    ) -> Result<T, CallError> {
        let mut future = pin!(future);
        loop {
            let mut cx = Context::from_waker(&self.waker);
            self.woken.0.store(false, Ordering::Release);
            if self.connection_error.is_none() {
                match Pin::new(&mut self.connection).poll(&mut cx) {
                    Poll::Ready(Ok(())) => self.connection_error = Some("the server closed the connection".into()),
                    Poll::Ready(Err(err)) => self.connection_error = Some(status_from_h2(err).message),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                return result.map_err(CallError::Status);
            }
            if let Some(error) = &self.connection_error {
                return Err(CallError::Status(unavailable(error.clone())));
            }
            if self.woken.0.load(Ordering::Acquire) {
                continue;
            }
            let timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(CallError::Status(Status::new(Code::DeadlineExceeded, "deadline exceeded")));
                    }
                    Some(left)
                }
                None => None,
            };
            poll_once(&mut self.poll, &mut self.events, timeout)?;
            if self.events.iter().any(|e| e.token() == SIGNALS) {
                if let Some(fd) = &self.signals {
                    while let Ok(Some(_)) = sys::read_signal(fd.as_raw_fd()) {}
                }
                return Err(CallError::Interrupted);
            }
        }
    }

    /// Sends a request message and waits for the response headers.
    pub fn start_call<Req: Message>(
        &mut self,
        path: &str,
        message: &Req,
        timeout: Option<Duration>,
    ) -> Result<ResponseStream, CallError> {
        let call = self.send_call(path, message, timeout)?;
        self.block_on(receive_response(call.response, call.deadline), call.deadline)
    }

    /// Reads the next message of a response; `Ok(None)` once it ended with OK.
    pub fn next_message<M: Message + Default>(&mut self, stream: &mut ResponseStream) -> Result<Option<M>, CallError> {
        let deadline = stream.deadline;
        let body = self.block_on(next_body(stream), deadline)?;
        match body {
            None => Ok(None),
            Some(bytes) => M::decode(bytes)
                .map(Some)
                .map_err(|e| CallError::Status(Status::internal(format!("cannot decode the response: {e}")))),
        }
    }

    /// A unary call.
    pub fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        message: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CallError> {
        let call = self.send_call(path, message, timeout)?;
        self.finish_unary(call)
    }

    /// Sends a request without waiting for its answer, so another call can run meanwhile on the same
    /// connection (`run` keeps a WaitJob open while it streams output); [`Client::finish_unary`] collects it.
    pub fn send_call<Req: Message>(
        &mut self,
        path: &str,
        message: &Req,
        timeout: Option<Duration>,
    ) -> Result<PendingCall, CallError> {
        let request = grpc::request(&self.authority, path, timeout);
        let body = encode_message(message);
        let deadline = timeout.map(|t| Instant::now() + t);
        let response = self.block_on(send_request(self.send.clone(), request, body), deadline)?;
        Ok(PendingCall { response, deadline })
    }

    /// Waits for a sent unary call's one response message.
    pub fn finish_unary<Resp: Message + Default>(&mut self, call: PendingCall) -> Result<Resp, CallError> {
        let mut stream = self.block_on(receive_response(call.response, call.deadline), call.deadline)?;
        let response = self
            .next_message(&mut stream)?
            .ok_or_else(|| CallError::Status(Status::internal("the server sent no response message")))?;
        if self.next_message::<Resp>(&mut stream)?.is_some() {
            return Err(CallError::Status(Status::internal("the server sent more than one response message")));
        }
        Ok(response)
    }
}

/// The `:authority` of every request, for the server named `name`: an IPv6 address goes in brackets, as in a
/// URI; a name that cannot be one is refused here, before any call is built with it.
fn request_authority(name: &str) -> Result<String, Status> {
    let authority = match name.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{name}]"),
        Err(_) => name.to_string(),
    };
    match http::uri::Authority::try_from(authority.as_str()) {
        Ok(_) => Ok(authority),
        Err(err) => {
            Err(Status::invalid_argument(format!("server name {name:?} cannot name an HTTP/2 authority: {err}")))
        }
    }
}

async fn send_request(
    send: SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
) -> Result<h2::client::ResponseFuture, Status> {
    let mut send = send.ready().await.map_err(status_from_h2)?;
    let (response, mut request_stream) = send.send_request(request, false).map_err(status_from_h2)?;
    request_stream.send_data(body, true).map_err(status_from_h2)?;
    Ok(response)
}

async fn receive_response(
    response: h2::client::ResponseFuture,
    deadline: Option<Instant>,
) -> Result<ResponseStream, Status> {
    let response = response.await.map_err(status_from_h2)?;
    let (parts, body) = response.into_parts();
    let server_version = parts.headers.get(grpc::SERVER_VERSION).and_then(|v| v.to_str().ok()).map(String::from);
    if parts.status != http::StatusCode::OK {
        return Err(Status::new(Code::Unknown, format!("the server answered HTTP {}", parts.status)));
    }
    if let Some(status) = grpc::status_in(&parts.headers) {
        // Trailers-Only: the call ended without a message.
        if status.code != Code::Ok {
            return Err(status);
        }
        let decoder = MessageDecoder::new(grpc::MAX_RESPONSE_MESSAGE);
        return Ok(ResponseStream { body: None, decoder, server_version, deadline });
    }
    let decoder = MessageDecoder::new(grpc::MAX_RESPONSE_MESSAGE);
    Ok(ResponseStream { body: Some(body), decoder, server_version, deadline })
}

async fn next_body(stream: &mut ResponseStream) -> Result<Option<Bytes>, Status> {
    loop {
        if let Some(message) = stream.decoder.next_message().map_err(framing_status)? {
            return Ok(Some(message));
        }
        let Some(body) = stream.body.as_mut() else { return Ok(None) };
        match poll_fn(|cx| body.poll_data(cx)).await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                stream.decoder.push(chunk);
            }
            Some(Err(err)) => return Err(status_from_h2(err)),
            None => {
                let trailers = poll_fn(|cx| body.poll_trailers(cx)).await.map_err(status_from_h2)?;
                stream.body = None;
                let status = trailers
                    .as_ref()
                    .and_then(grpc::status_in)
                    .unwrap_or_else(|| Status::internal("the response ended without a grpc-status"));
                if stream.decoder.buffered() > 0 {
                    return Err(Status::internal("the response ended inside a message"));
                }
                return if status.code == Code::Ok { Ok(None) } else { Err(status) };
            }
        }
    }
}

fn poll_once(poll: &mut mio::Poll, events: &mut Events, timeout: Option<Duration>) -> Result<(), Status> {
    match poll.poll(events, timeout) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(err) => Err(unavailable(format!("waiting for the server failed: {err}"))),
    }
}

/// Resolves `host:port`; returns the host part (for SNI and certificate checks) and the first address.
fn resolve(server: &str) -> Result<(String, SocketAddr), Status> {
    let host = match server.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => {
            return Err(Status::invalid_argument(format!("server address {server:?} has no port: write HOST:PORT")))
        }
    };
    let address = server
        .to_socket_addrs()
        .map_err(|e| unavailable(format!("cannot resolve {server}: {e}")))?
        .next()
        .ok_or_else(|| unavailable(format!("{server} resolves to no address")))?;
    Ok((host, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_server_name_is_bracketed_and_a_name_no_authority_takes_is_refused() {
        assert_eq!(request_authority("::1").unwrap(), "[::1]");
        assert_eq!(request_authority("localhost").unwrap(), "localhost");
        assert_eq!(request_authority("10.0.0.1").unwrap(), "10.0.0.1");
        // A request built on the bracketed form is valid; on the bare one it was not.
        let _ = grpc::request(&request_authority("fe80::1").unwrap(), grpc::path::GET_JOB, None);
        assert!(http::Request::post("https://::1/x").body(()).is_err());
        assert_eq!(request_authority("a b").unwrap_err().code, Code::InvalidArgument);
    }
}
