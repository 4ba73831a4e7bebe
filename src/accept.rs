//! A client connection as the server holds it: a TCP stream that keeps its
//! slot of the connection limit while it lives, and is closed if the
//! client sends nothing at all (no TLS handshake, no HTTP/2 preface) for the
//! handshake timeout. Once the client has spoken, HTTP/2 keepalive watches
//! the connection.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first byte arrives.
    handshake: Option<Pin<Box<Sleep>>>,
}

impl Limited {
    pub fn new(stream: TcpStream, slot: OwnedSemaphorePermit, handshake_timeout: Duration) -> Self {
        Self {
            stream,
            _slot: slot,
            handshake: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.handshake = None,
            Poll::Pending => {
                if let Some(deadline) = &mut self.handshake
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing before the handshake timeout",
                    )));
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}
