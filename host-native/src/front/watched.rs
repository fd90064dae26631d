//! The socket under a WebSocket, watched for frames begun and not finished.
//!
//! A client that sends most of a large frame and goes silent would make
//! the WebSocket layer hold what it sent forever; the connection's task
//! fails the read (`TimedOut`) once a message begun has taken longer than
//! the frame deadline, and the connection is closed with 1008.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The upgraded connection, with when the bytes of an unfinished message
/// began to arrive, and the deadline armed once it waits for the rest.
pub struct Watched {
    inner: TokioIo<hyper::upgrade::Upgraded>,
    bound: Duration,
    since: Option<Instant>,
    /// Armed only while a message is unfinished and the socket has nothing
    /// more: whole messages, the usual case, never allocate one.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Watched {
    /// `inner`, where a message may take `bound` to arrive once begun.
    pub fn new(inner: TokioIo<hyper::upgrade::Upgraded>, bound: Duration) -> Self {
        Watched {
            inner,
            bound,
            since: None,
            deadline: None,
        }
    }

    /// A whole message was read: nothing is pending (bytes of the next one
    /// that came in the same read are too few to matter).
    pub fn message_done(&mut self) {
        self.since = None;
        self.deadline = None;
    }
}

fn overdue() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "a frame took too long to arrive")
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(overdue()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        if polled.is_pending()
            && self.deadline.is_none()
            && let Some(since) = self.since
        {
            let mut deadline = Box::pin(tokio::time::sleep_until((since + self.bound).into()));
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(overdue()));
            }
            self.deadline = Some(deadline);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
