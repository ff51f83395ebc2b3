//! Binding the services' listeners.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::error::StackError;

/// Binds `addr` (port 0: any free port) and says which address it got.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StackError> {
    let bound = TcpListener::bind(addr)
        .await
        .and_then(|listener| Ok((listener.local_addr()?, listener)));
    match bound {
        Ok((local, listener)) => Ok((listener, local)),
        Err(source) => Err(StackError::Bind { addr, source }),
    }
}
