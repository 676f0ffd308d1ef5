//! [`Responder`]: the server's side of one call's response. Headers go out once, before the first message;
//! the call ends with trailers, or, if it fails before any message was sent, with one Trailers-Only HEADERS
//! frame.

use std::task::{Context, Poll};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::SendStream;

use super::headers::{response, trailers};
use super::Status;

/// Where a call's response stands.
pub enum Responder {
    /// Nothing sent yet.
    Idle(SendResponse<Bytes>),
    /// Headers sent; messages and trailers go here.
    Open(SendStream<Bytes>),
    /// Trailers sent (or the stream was reset).
    Closed,
}

impl Responder {
    pub fn new(respond: SendResponse<Bytes>) -> Self {
        Responder::Idle(respond)
    }

    /// The stream messages go on, sending the response headers first if they have not gone yet. `None` once
    /// the response is over or the stream failed.
    pub fn open(&mut self) -> Option<&mut SendStream<Bytes>> {
        if let Responder::Idle(respond) = self {
            *self = match respond.send_response(response(), false) {
                Ok(send) => Responder::Open(send),
                Err(_) => Responder::Closed,
            };
        }
        match self {
            Responder::Open(send) => Some(send),
            _ => None,
        }
    }

    /// Queues what is left of `message` as HTTP/2 flow control allows: `Ready(true)` once all of it is queued,
    /// `Ready(false)` if the stream is over, `Pending` while waiting for the client to grant capacity (the
    /// waker is with h2). Nothing is queued beyond what the client's windows allow.
    pub fn poll_send_within_capacity(&mut self, cx: &mut Context<'_>, message: &mut Bytes) -> Poll<bool> {
        let Some(send) = self.open() else { return Poll::Ready(false) };
        while !message.is_empty() {
            send.reserve_capacity(message.len());
            match send.capacity() {
                0 => match send.poll_capacity(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(None | Some(Err(_))) => return Poll::Ready(false),
                },
                capacity => {
                    let part = message.split_to(capacity.min(message.len()));
                    if send.send_data(part, false).is_err() {
                        return Poll::Ready(false);
                    }
                }
            }
        }
        Poll::Ready(true)
    }

    /// Queues one message. False if it cannot go (the stream is over).
    pub fn send_message(&mut self, message: Bytes) -> bool {
        self.open().is_some_and(|send| send.send_data(message, false).is_ok())
    }

    /// Ends the response with `status`: trailers after the headers, or a Trailers-Only response if nothing was
    /// sent.
    ///
    /// If the client is still sending, no reset is sent here: an explicit reset would discard the queued status.
    /// When the call is dropped, h2 sends RST_STREAM(NO_ERROR) itself, after the queued frames, as RFC 9113
    /// §8.1 asks.
    pub fn finish(&mut self, status: &Status) {
        match std::mem::replace(self, Responder::Closed) {
            Responder::Idle(mut respond) => {
                let mut response = response();
                response.headers_mut().extend(trailers(status));
                let _ = respond.send_response(response, true);
            }
            Responder::Open(mut send) => {
                let _ = send.send_trailers(trailers(status));
            }
            Responder::Closed => {}
        }
    }

    /// True if the client has reset the stream (or the response is over).
    pub fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Responder::Idle(respond) => respond.poll_reset(cx).is_ready(),
            Responder::Open(send) => send.poll_reset(cx).is_ready(),
            Responder::Closed => true,
        }
    }
}
