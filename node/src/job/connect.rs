//! The requester's side of a job stream: a TLS 1.3 connection to a pinned peer, the job request and
//! the peer's answer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use consort_api::proto::peer_client::PeerClient;
use consort_api::proto::peer_frame::Kind;
use consort_api::proto::{JobAccept, JobRequest, PeerFrame};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::channel::{JobChannel, kind_name};
use crate::config::PeerEntry;
use crate::state::{CONNECTION_WINDOW, NodeState, STREAM_WINDOW};
use crate::tls::{self, Counting, WireCounters};
use crate::{FRAME_BUFFER, MAX_MESSAGE_BYTES, identity};

/// How long a node waits for the peer's first answer or final `JobEnd`. The first answer comes
/// after the responder has loaded and validated its dataset, and the `JobEnd` after the peer has
/// written its output: at 10^8 rows each takes a minute or more on a loaded 2-core machine, so
/// this is generous. A peer that goes away is noticed at once (the stream closes); the timeout
/// only catches a peer that stays connected and never answers.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The peer's answer to a job request.
pub enum Answer {
    Accepted(JobAccept),
    Refused(String),
}

/// Opens a job stream to `peer`, sends `request` and waits for the answer. The channel is returned
/// with a refusal too, so the caller can record it.
pub async fn open(
    state: &NodeState,
    peer: &PeerEntry,
    request: JobRequest,
    waiting: Option<&super::JobHandle>,
) -> Result<(JobChannel, Answer, Arc<WireCounters>)> {
    let (mut client, wire) = connect(state, peer).await?;
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    tx.send(PeerFrame { kind: Some(Kind::Request(request)) }).await.map_err(|_| anyhow!("job stream closed"))?;
    let inbound = client
        .run_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            anyhow!(
                "peer '{}' at {} did not take the job: {} (is this node's certificate pinned there with `consort peer add`?)",
                peer.name,
                peer.addr,
                s.message()
            )
        })?
        .into_inner();
    let channel = JobChannel::new(tx, inbound, state.config().limits.peer_idle());
    let mut wait = ANSWER_TIMEOUT;
    let answer = loop {
        let answer = match tokio::time::timeout(wait, channel.recv_within(wait)).await {
            Ok(Ok(Kind::Waiting(_))) if wait == ANSWER_TIMEOUT => {
                // The responder's operator approves each job of this grant: wait for the decision.
                if let Some(h) = waiting {
                    h.stage("awaiting the peer's approval", 0, 0);
                }
                wait = crate::policy::APPROVAL_TIMEOUT + Duration::from_secs(60);
                continue;
            }
            answer => answer,
        };
        break answer;
    };
    let answer = match answer {
        Err(_) => bail!("peer '{}' did not answer the job request within {wait:?}", peer.name),
        Ok(Ok(Kind::Accept(a))) => Answer::Accepted(a),
        Ok(Ok(Kind::Reject(r))) => Answer::Refused(super::envelope::peer_text(&r.reason)),
        Ok(Ok(other)) => bail!("peer '{}' answered the job request with a {} frame", peer.name, kind_name(&other)),
        Ok(Err(e)) => bail!(
            "peer '{}' dropped the job request: {e} (is this node's certificate pinned there with `consort peer add`?)",
            peer.name
        ),
    };
    Ok((channel, answer, wire))
}

/// Opens a TLS 1.3 connection to a pinned peer (a new connection per job, so its byte counts are the
/// job's).
pub async fn connect(
    state: &NodeState,
    peer: &PeerEntry,
) -> Result<(PeerClient<tonic::transport::Channel>, Arc<WireCounters>)> {
    let peer_certs = crate::state::peer_certs(&state.dir, peer)?;
    let tls = tls::client_config(state.cert.clone(), state.key(), peer_certs)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(identity::tls_server_name(&peer.name)).context("invalid peer name")?;
    let wire = Arc::new(WireCounters::default());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", peer.addr))
        .with_context(|| format!("invalid address '{}' for peer '{}'", peer.addr, peer.name))?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .tcp_nodelay(true);
    let (addr, counters) = (peer.addr.clone(), wire.clone());
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, server_name, addr, counters) =
                (connector.clone(), server_name.clone(), addr.clone(), counters.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let stream = connector.connect(server_name, Counting::new(tcp, counters)).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| anyhow!("cannot connect to peer '{}' at {}: {}", peer.name, peer.addr, error_chain(&e)))?;
    let client = PeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok((client, wire))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
