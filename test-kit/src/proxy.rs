//! A TCP proxy for fault and TLS tests, on a thread of its own (usable from sync and async
//! tests alike):
//!
//! - [`Proxy::stall`] makes every connection open at that moment stop forwarding, in both
//!   directions, with its sockets left open: a host that stops answering without closing
//!   anything (a blackholed path, a frozen VM). Connections opened afterwards are forwarded as
//!   usual, as a replacement path would be; [`Proxy::resume`] lets the held bytes through.
//! - [`Proxy::start_tls`] terminates TLS in front of a plaintext server (a broker that only
//!   speaks plaintext, reached over TLS as managed Kafka is).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use waybill_service_kit::security::{TlsFiles, tls::server_config};

/// See the module docs. Stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// Connections numbered below this are stalled (0: none).
    stalled_below: watch::Sender<u64>,
    next_id: Arc<AtomicU64>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A plaintext proxy to `upstream` on a free loopback port.
    pub fn start(upstream: SocketAddr) -> Self {
        Self::spawn(upstream, None)
    }

    /// A proxy that serves TLS with `files`' certificate and forwards plaintext to `upstream`.
    pub fn start_tls(upstream: SocketAddr, files: &TlsFiles) -> Self {
        let mut config = server_config(files).expect("proxy tls config");
        // The services' config offers HTTP/2 only; a Kafka or Postgres client offers no ALPN.
        config.alpn_protocols.clear();
        Self::spawn(upstream, Some(TlsAcceptor::from(Arc::new(config))))
    }

    fn spawn(upstream: SocketAddr, tls: Option<TlsAcceptor>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let (stalled_below, stalled) = watch::channel(0);
        let next_id = Arc::new(AtomicU64::new(1));
        let stop = CancellationToken::new();
        let thread = {
            let (next_id, stop) = (next_id.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("proxy listener");
                    loop {
                        let accepted = tokio::select! {
                            () = stop.cancelled() => return,
                            accepted = listener.accept() => accepted,
                        };
                        let Ok((client, _)) = accepted else { continue };
                        let id = next_id.fetch_add(1, Ordering::SeqCst);
                        let (tls, stalled, stop) = (tls.clone(), stalled.clone(), stop.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = forward(client, upstream, tls, id, stalled) => {}
                            }
                        });
                    }
                });
            })
        };
        Self {
            addr,
            stalled_below,
            next_id,
            stop,
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding on every connection open now (see the module docs).
    pub fn stall(&self) {
        self.stalled_below
            .send_replace(self.next_id.load(Ordering::SeqCst));
    }

    /// Forwards again on every stalled connection, held bytes first.
    pub fn resume(&self) {
        self.stalled_below.send_replace(0);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    tls: Option<TlsAcceptor>,
    id: u64,
    stalled: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (server_read, server_write) = server.into_split();
    type Read = Box<dyn AsyncRead + Unpin + Send>;
    type Write = Box<dyn AsyncWrite + Unpin + Send>;
    let (client_read, client_write): (Read, Write) = match tls {
        None => {
            let (read, write) = client.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(acceptor) => {
            let Ok(client) = acceptor.accept(client).await else {
                return;
            };
            let (read, write) = tokio::io::split(client);
            (Box::new(read), Box::new(write))
        }
    };
    // Either direction ending (EOF or error) ends the connection.
    tokio::select! {
        () = pipe(client_read, server_write, id, stalled.clone()) => {}
        () = pipe(server_read, client_write, id, stalled) => {}
    }
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    id: u64,
    mut stalled: watch::Receiver<u64>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held while this connection is stalled; the proxy stopping ends the wait too.
        if stalled
            .wait_for(|below| id >= *below || *below == 0)
            .await
            .is_err()
        {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
}
