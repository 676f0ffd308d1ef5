//! [`TlsStream`]: a rustls connection over a non-blocking mio socket, exposed through tokio's `AsyncRead` and
//! `AsyncWrite` traits (the only part of tokio h2 needs).
//!
//! The socket is registered edge-triggered for both directions once; a method returns `Pending` only after the
//! socket itself said `WouldBlock`, so the next readiness event is guaranteed and nothing has to re-register.
//! The reactor maps that event to the owning task. Facts this relies on (`docs/wire.md`): drain
//! rustls' plaintext before reading more TLS records; a full rustls buffer means `Pending`, never `Ok(0)`;
//! flush only in `poll_flush`; after a TLS error, write once more so the alert reaches the peer.
//!
//! Received bytes go through a buffer of our own: rustls reads at most 4 KiB from the socket per `read_tls`, so
//! handing it the socket directly costs four or five `recv` calls per 16 KiB record. One large `recv` into the
//! buffer, then feeding rustls from memory, makes the receive side of a fast stream cost a few system calls
//! per megabyte instead.

use std::io::{self, BufRead, Read, Write};
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
    /// TLS bytes received from the socket that rustls has not taken yet.
    inbound: Inbound,
}

/// A receive buffer: `buf[start..end]` holds bytes read from the socket and not yet given to rustls.
struct Inbound {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbound {
    fn new(size: usize) -> Self {
        Inbound { buf: vec![0; size].into_boxed_slice(), start: 0, end: 0 }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// One `read` from `source` into the (empty) buffer.
    fn fill_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        let n = source.read(&mut self.buf)?;
        (self.start, self.end) = (0, n);
        Ok(n)
    }
}

impl<C, D> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
{
    /// Wraps `socket`; each `recv` reads up to `read_buffer` bytes (a server, which mostly sends, needs little;
    /// a client streaming output wants large reads).
    pub fn new(socket: TcpStream, tls: C, read_buffer: usize) -> Self {
        TlsStream { socket, tls, read_closed: false, inbound: Inbound::new(read_buffer) }
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

    /// Gives rustls more received TLS bytes (reading the socket once if none are buffered) and processes them.
    /// `Ok(false)` when the socket has nothing more.
    fn read_tls(&mut self) -> io::Result<bool> {
        if self.inbound.is_empty() {
            loop {
                match self.inbound.fill_from(&mut self.socket) {
                    Ok(0) => {
                        self.read_closed = true;
                        // An empty reader is how rustls learns of the end of the stream.
                        self.tls.read_tls(&mut io::empty())?;
                        return Ok(true);
                    }
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        // Never called with an empty slice: rustls would take that for the end of the stream.
        let taken = self.tls.read_tls(&mut self.inbound.pending())?;
        if taken == 0 {
            // rustls takes nothing after a close_notify: whatever follows it is never read.
            (self.inbound.start, self.inbound.end) = (0, 0);
            self.read_closed = true;
        }
        self.inbound.start += taken;
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
        // Fill as much of `buf` as the bytes at hand allow: h2 hands us room for a whole frame, and each return
        // costs it a decode pass. Plaintext is copied straight from rustls' buffer (no zeroing of `buf` first).
        let wanted = buf.remaining();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut reader = this.tls.reader();
            match reader.fill_buf() {
                Ok([]) => return Poll::Ready(Ok(())), // close_notify: end of stream
                Ok(chunk) => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    reader.consume(n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) if buf.remaining() < wanted => return Poll::Ready(Ok(())), // the error comes next call
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.read_closed {
                if buf.remaining() < wanted {
                    return Poll::Ready(Ok(()));
                }
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
                Ok(false) if buf.remaining() < wanted => return Poll::Ready(Ok(())),
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
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// h2 hands over a DATA frame as its 9-byte header and its payload: taking both at once lets rustls fill
    /// whole records across them, instead of sealing the header alone in a record of its own.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            let n = this.tls.writer().write_vectored(bufs)?;
            if n > 0 || wanted == 0 {
                return Poll::Ready(Ok(n));
            }
            // rustls' buffer is full: make room by writing to the socket, or wait for it to drain.
            if !this.write_tls()? {
                return Poll::Pending;
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
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
