//! The gRPC transport's TCP connector: hyper's HTTP connector, plus an immediate ACK after
//! every read from the collector (Linux `TCP_QUICKACK`).
//!
//! Why: a collector that leaves Nagle's algorithm on (rotel does: its gRPC sockets never set
//! `TCP_NODELAY`) holds each small write until the previous one is acknowledged. While an
//! export is being received it writes HTTP/2 WINDOW_UPDATE frames, then the response; our
//! kernel delays the ACK of the WINDOW_UPDATE (up to 40 ms) because the client has nothing
//! left to send, and the response waits for it. Acknowledging right after each read took
//! the paced 10k-series export to rotel from about 33 ms to about 21 ms. The cost is one
//! `setsockopt` per read, a handful per export. Elsewhere than Linux the stream is unchanged.
//!
//! TLS is layered on top of this connector by tonic, so TLS endpoints get the same ACKs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

/// Connects like hyper's [`HttpConnector`] and hands out [`QuickAckStream`]s.
#[derive(Clone)]
pub struct QuickAckConnector {
    http: HttpConnector,
}

impl QuickAckConnector {
    /// Connects as tonic's own connector would, with `TCP_NODELAY` (the connect timeout is
    /// tonic's, layered on top).
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        QuickAckConnector { http }
    }
}

impl Default for QuickAckConnector {
    fn default() -> Self {
        QuickAckConnector::new()
    }
}

impl Service<Uri> for QuickAckConnector {
    type Response = QuickAckStream;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAckStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map(|io| QuickAckStream { io }) })
    }
}

/// A TCP stream that acknowledges what it has read at once.
pub struct QuickAckStream {
    io: TokioIo<TcpStream>,
}

impl QuickAckStream {
    /// Sends the pending ACK now. The kernel's quick-ACK mode is not sticky (it falls back
    /// to delayed ACKs by its own rules), hence once per read. A failure only means the
    /// usual delayed ACK, so it is ignored.
    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            let _ = socket2::SockRef::from(self.io.inner()).set_tcp_quickack(true);
        }
    }
}

impl Read for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.ack_now();
        }
        polled
    }
}

impl Write for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A read through the stream leaves the socket in quick-ACK mode, whatever the kernel
    /// decided on its own before.
    #[tokio::test]
    async fn a_read_switches_the_socket_to_quick_ack() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            peer.write_all(b"window update").await.unwrap();
            peer
        });
        let mut connector = QuickAckConnector::new();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let mut stream = std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map(|()| connector.call(uri))
            .unwrap()
            .await
            .unwrap();
        let _peer = server.await.unwrap();
        let sock = socket2::SockRef::from(stream.io.inner());
        sock.set_tcp_quickack(false).unwrap();
        assert!(!sock.tcp_quickack().unwrap());

        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let mut buf = hyper::rt::ReadBuf::uninit(&mut storage);
        std::future::poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, buf.unfilled()))
            .await
            .unwrap();
        assert_eq!(buf.filled(), b"window update");
        assert!(socket2::SockRef::from(stream.io.inner())
            .tcp_quickack()
            .unwrap());
    }
}
