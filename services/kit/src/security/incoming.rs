//! The connections a server takes: plain TCP or TLS over TCP, accepted off the serving path
//! (a slow or hostile handshake never holds up the next accept), each carrying what the
//! caller-identity layer needs to know about its peer ([`PeerInfo`]).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use super::tls::ReloadableTls;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known about a connection's peer; a request extension on every call.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client certificate it presented (mTLS listeners only; already verified against the
    /// listener's client CA during the handshake).
    pub client_cert: Option<CertificateDer<'static>>,
}

/// One accepted connection.
pub enum ServerStream {
    /// Plaintext (development, or behind a TLS-terminating proxy).
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for ServerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(tcp) => PeerInfo {
                remote_addr: tcp.peer_addr().ok(),
                client_cert: None,
            },
            Self::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                PeerInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    client_cert: session
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|cert| cert.clone().into_owned()),
                }
            }
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, completing TLS handshakes (when `tls`
/// is set) in their own tasks; yields only connections ready for HTTP/2.
pub fn accept(
    listener: TcpListener,
    tls: Option<ReloadableTls>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<ServerStream>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if sender.send(Ok(ServerStream::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = sender.send(Ok(ServerStream::Tls(Box::new(stream)))).await;
                            }
                            Ok(Err(error)) => debug!(%peer, %error, "tls handshake refused"),
                            Err(_) => debug!(%peer, "tls handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
