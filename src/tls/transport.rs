//! [`TlsStream`]: a rustls connection over a non-blocking mio socket, exposed through tokio's `AsyncRead` and
//! `AsyncWrite` traits (the only part of tokio h2 needs).
//!
//! The socket is registered edge-triggered for both directions once; a method returns `Pending` only after the
//! socket itself said `WouldBlock`, so the next readiness event is guaranteed and nothing has to re-register.
//! The reactor maps that event to the owning task. Facts this relies on (`shared/notes/h2-on-mio.md`): drain
//! rustls' plaintext before reading more TLS records; a full rustls buffer means `Pending`, never `Ok(0)`;
//! flush only in `poll_flush`; after a TLS error, write once more so the alert reaches the peer.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use mio::net::TcpStream;
use rustls::ConnectionCommon;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS connection (server or client side) over a non-blocking TCP socket.
pub struct TlsStream<C> {
    pub socket: TcpStream,
    pub tls: C,
    /// The peer closed its side of the TCP connection.
    read_closed: bool,
}

impl<C, D> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
{
    pub fn new(socket: TcpStream, tls: C) -> Self {
        TlsStream { socket, tls, read_closed: false }
    }

    /// Moves the handshake forward with whatever the socket has. `Ok(true)` once it is complete (and all of
    /// our handshake bytes are written), `Ok(false)` to wait for the next readiness event.
    pub fn drive_handshake(&mut self) -> io::Result<bool> {
        loop {
            self.write_tls()?;
            if !self.tls.is_handshaking() {
                return Ok(!self.tls.wants_write());
            }
            if self.read_closed {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during the TLS handshake"));
            }
            match self.read_tls()? {
                true => continue,
                false => return Ok(false),
            }
        }
    }

    /// Reads TLS records from the socket and processes them. `Ok(false)` when the socket has nothing more.
    fn read_tls(&mut self) -> io::Result<bool> {
        loop {
            match self.tls.read_tls(&mut self.socket) {
                Ok(0) => {
                    self.read_closed = true;
                    return Ok(true);
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if let Err(err) = self.tls.process_new_packets() {
            // Send the alert that explains the failure to the peer before giving up.
            let _ = self.write_tls();
            return Err(io::Error::new(io::ErrorKind::InvalidData, err));
        }
        Ok(true)
    }

    /// Writes buffered TLS records to the socket. `Ok(true)` if everything was written.
    fn write_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl<C, D> AsyncRead for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
{
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection without close_notify",
                )));
            }
            match this.read_tls() {
                Ok(true) => {
                    // Processing may have produced records to send (key updates, alerts); best effort now.
                    if this.tls.wants_write() {
                        this.write_tls()?;
                    }
                }
                Ok(false) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<C, D> AsyncWrite for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
{
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.tls.writer().write(buf)?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // rustls' buffer is full: make room by writing to the socket, or wait for it to drain.
            if !this.write_tls()? {
                return Poll::Pending;
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().write_tls() {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.send_close_notify();
        Pin::new(this).poll_flush(cx)
    }
}
