//! Turns SIGINT/SIGTERM into a [`CancellationToken`]: the first signal cancels it (every
//! service then drains), a second one exits the process at once.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled by the first SIGINT or SIGTERM. A second signal exits with status 130.
///
/// Spawns the signal-watching task on the current runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested, draining (signal again to exit at once)");
        cancel.cancel();
        wait_for_signal().await;
        warn!("second signal, exiting at once");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                warn!(%error, "cannot watch SIGTERM, watching ctrl-c only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
