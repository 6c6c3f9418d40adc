//! The listener: every connection must complete a TLS handshake with a client certificate
//! from the test CA (failures counted with their reason) before HTTP is served on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::routes::handle;
use super::{lock, Shared};

/// How long a TCP peer may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until aborted, each served by its own task.
pub(super) fn spawn_accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(shared.cfg.tls.clone());
        loop {
            let (tcp, _peer) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(
                tcp,
                acceptor.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
        }
    })
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            record_tls_failure(&shared, e.to_string());
            return;
        }
        Err(_) => {
            record_tls_failure(&shared, "handshake timed out".to_string());
            return;
        }
    };
    shared.handshakes.fetch_add(1, Ordering::SeqCst);
    // Set by a request handler to close this connection without answering.
    let kill = Arc::new(Notify::new());
    let svc = {
        let shared = shared.clone();
        let kill = kill.clone();
        service_fn(move |req| handle(req, shared.clone(), kill.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
    // Dropping `conn` closes the socket (no TLS close_notify, no HTTP response).
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

fn record_tls_failure(shared: &Shared, reason: String) {
    lock(&shared.tls_failure_reasons).push(reason);
    shared.tls_failures.fetch_add(1, Ordering::SeqCst);
}
