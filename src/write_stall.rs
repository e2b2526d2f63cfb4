//! A connection whose peer stops reading is given up after a while.
//!
//! [`WriteStallLimit`] wraps a socket: when a write (or flush) can make no progress for the
//! limit, it fails with `TimedOut` and the connection ends. Any progress starts the count
//! again, so a slow link that keeps reading is never cut off, and an idle connection (nothing
//! to write) is left to other timers. Two users:
//! - the HTTP server: hyper has a timer for reading request headers but none for writing, so
//!   a client that sent pipelined requests and never read the answers kept its connection,
//!   hyper's buffers and a descriptor for good (about 140 KiB each);
//! - the Miniserver client: a Miniserver that stops reading but keeps pinging stalls the
//!   WebSocket's reads too (tungstenite first flushes the pongs it owes), so without this
//!   only the next keepalive's send timeout would notice, up to 40 s later.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail after `limit` without progress.
#[derive(Debug)]
pub(crate) struct WriteStallLimit<I> {
    io: I,
    limit: Duration,
    /// Who stopped reading, for the error (`the client`, `the Miniserver`).
    peer: &'static str,
    /// Running while writes wait; dropped at the first progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteStallLimit<I> {
    pub(crate) fn new(io: I, limit: Duration, peer: &'static str) -> Self {
        WriteStallLimit {
            io,
            limit,
            peer,
            stalled: None,
        }
    }

    /// The outcome of a write attempt: progress clears the stall, a wait starts or
    /// continues it, and a wait past the limit is an error.
    fn after_attempt<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let (limit, peer) = (self.limit, self.peer);
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{peer} read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStallLimit<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStallLimit<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_attempt(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_attempt(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_flush(cx);
        self.after_attempt(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after_attempt(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit() {
        // a 1 KiB pipe: the second write waits for a reader that never comes
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut io = WriteStallLimit::new(ours, Duration::from_secs(30), "the reader");
        io.write_all(&[0; 1024]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the reader read nothing for 30s");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = WriteStallLimit::new(ours, Duration::from_secs(30), "the reader");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            // 512 bytes every 20 s: each wait of the writer is shorter than the limit
            while total < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
            total
        });
        // about five minutes of waiting in all, none of it 30 s without progress
        io.write_all(&[0; 8 * 1024]).await.unwrap();
        assert!(reader.await.unwrap() >= 8 * 1024 - 1024);
    }
}
