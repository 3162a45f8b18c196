//! A running node: the peer service on TCP (TLS 1.3, pinned mutual auth) and the control service on
//! a Unix socket in the node directory, both served by tonic on the current tokio runtime.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tracing::{info, warn};

use crate::MAX_MESSAGE_BYTES;
use crate::config::{self, NodeConfig};
use crate::proto::control_server::ControlServer;
use crate::proto::peer_server::PeerServer;
pub use crate::state::{CONNECTION_WINDOW, NodeState, STREAM_WINDOW};
use crate::tls::{self, PeerConn, PinnedPeers};

/// A node running in this process.
pub struct NodeHandle {
    pub state: Arc<NodeState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// The metrics endpoint (`crate::monitor`), when the node serves one: its address and task.
    monitor: Option<(SocketAddr, JoinHandle<()>)>,
}

impl NodeHandle {
    /// The peer service's actual address (useful with port 0).
    pub fn peer_addr(&self) -> SocketAddr {
        self.state.listen_addr
    }

    /// The metrics endpoint's actual address, if the node serves one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.monitor.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops both services: no new connections or jobs; running jobs get `grace` to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            warn!("jobs still running after {grace:?}; stopping them");
            // Dropping a job closes its stream, so the peer fails the job cleanly; outputs are only
            // ever renamed into place complete, so nothing partial is left behind.
            self.state.abort_jobs();
            if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
                self.task.abort();
            }
        }
        if let Some((_, monitor)) = self.monitor.take() {
            monitor.abort();
        }
        cleanup(&self.state.dir);
    }

    /// Waits until the node stops by itself (it only does on a fatal serve error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(config::CONTROL_SOCKET));
    let _ = std::fs::remove_file(dir.join(config::LISTEN_ADDR_FILE));
    let _ = std::fs::remove_file(dir.join(config::METRICS_ADDR_FILE));
}

/// Starts a node from its directory on the current tokio runtime.
pub async fn start(dir: &Path) -> Result<NodeHandle> {
    start_with_metrics(dir, None).await
}

/// [`start`], serving metrics and health on `metrics` (HOST:PORT) if given, else where the
/// config's `[metrics] listen` says, if it does.
pub async fn start_with_metrics(dir: &Path, metrics: Option<&str>) -> Result<NodeHandle> {
    let dir = config::absolute(dir)?;
    let config = NodeConfig::load(&dir)?;
    let metrics = metrics.map(str::to_string).or_else(|| config.metrics.as_ref().map(|m| m.listen.clone()));
    let metrics_listener = match &metrics {
        Some(addr) => Some(crate::monitor::bind(addr).await?),
        None => None,
    };
    let control_path = dir.join(config::CONTROL_SOCKET);
    let control_listener = bind_control_socket(&control_path).await?;
    let tcp = TcpListener::bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen_addr = tcp.local_addr()?;
    let state = NodeState::open(&dir, listen_addr).await?;
    config::write_atomic(&dir.join(config::LISTEN_ADDR_FILE), listen_addr.to_string().as_bytes(), false)?;
    let pinned = state.pinned.clone();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(state.cert.clone(), state.key(), pinned.clone())?));

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (peer_stop_tx, peer_stop_rx) = oneshot::channel::<()>();
    let (control_stop_tx, control_stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = shutdown_rx.await;
        let _ = peer_stop_tx.send(());
        let _ = control_stop_tx.send(());
    });

    let incoming = accept_peers(tcp, acceptor, pinned);
    let peer_server = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A job is one stream; a peer has no use for many at once on one connection.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            PeerServer::new(crate::job::service::PeerService::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = peer_stop_rx.await;
        });
    let control_server = tonic::transport::Server::builder()
        .add_service(ControlServer::new(crate::control::ControlService::new(state.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(control_listener), async {
            let _ = control_stop_rx.await;
        });
    info!(node = %state.config().name, peer_addr = %listen_addr, control = %control_path.display(), "node started");
    let task = tokio::spawn(async move {
        let (p, c) = tokio::join!(peer_server, control_server);
        if let Err(e) = p {
            warn!("peer service stopped: {e}");
        }
        if let Err(e) = c {
            warn!("control service stopped: {e}");
        }
    });
    let monitor = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            config::write_atomic(&dir.join(config::METRICS_ADDR_FILE), addr.to_string().as_bytes(), false)?;
            Some((addr, crate::monitor::serve(listener, state.clone())))
        }
        None => None,
    };
    Ok(NodeHandle { state, shutdown: Some(shutdown_tx), task, monitor })
}

/// Binds DIR/control.sock with mode 0600. A stale socket (no node answering) is replaced; a live
/// one means the node is already running.
async fn bind_control_socket(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "a node is already running in {} ({} answers)",
                path.parent().unwrap_or(path).display(),
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// TLS handshakes in progress at most. Before the handshake a connection is anybody's: when the
/// cap is reached a new connection closes the oldest pending one, since an honest handshake takes
/// milliseconds while idle connections would hold file descriptors for the whole timeout (300 idle
/// connections against a 256-descriptor limit made legitimate jobs fail).
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// HTTP/2 streams (jobs) a peer may have open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes pending from one IP address at most: a new connection from an address at the
/// cap closes that address's oldest pending one, so one host holds at most this many of the
/// [`MAX_PENDING_HANDSHAKES`] and cannot push out other hosts' handshakes.
pub const MAX_PENDING_HANDSHAKES_PER_ADDRESS: usize = 32;

type Pending = VecDeque<(std::net::IpAddr, tokio::task::AbortHandle)>;

/// Forgets finished handshakes; closes the oldest pending one of `from` at the per-address cap,
/// and the oldest of all at the global cap.
fn make_room(pending: &mut Pending, from: std::net::IpAddr) {
    pending.retain(|(_, h)| !h.is_finished());
    if pending.iter().filter(|(ip, _)| *ip == from).count() >= MAX_PENDING_HANDSHAKES_PER_ADDRESS
        && let Some(i) = pending.iter().position(|(ip, _)| *ip == from)
        && let Some((_, oldest)) = pending.remove(i)
    {
        oldest.abort();
    }
    while pending.len() >= MAX_PENDING_HANDSHAKES {
        if let Some((_, oldest)) = pending.pop_front() {
            oldest.abort();
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently; only connections from pinned
/// peers come out. Rejections are logged with the remote address.
fn accept_peers(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    pinned: PinnedPeers,
) -> ReceiverStream<Result<PeerConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut pending: Pending = VecDeque::new();
        loop {
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                // The server dropped the incoming stream: it is shutting down.
                _ = tx.closed() => break,
            };
            let (stream, remote) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            make_room(&mut pending, remote.ip());
            let (acceptor, pinned, tx) = (acceptor.clone(), pinned.clone(), tx.clone());
            let handshake = tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, PeerConn::accept(&acceptor, stream, remote, &pinned))
                    .await
                {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => warn!(%remote, "rejected peer connection: {e}"),
                    Err(_) => warn!(%remote, "rejected peer connection: TLS handshake timed out"),
                }
            });
            pending.push_back((remote.ip(), handshake.abort_handle()));
        }
    });
    ReceiverStream::new(rx)
}
