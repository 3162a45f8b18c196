//! Peer links: TLS 1.3 only, mutual authentication, exact certificate pinning.
//!
//! There is no CA and no hostname check: a peer is accepted only if the certificate it presents is
//! byte-for-byte one pinned in the config (`consort peer add`), and TLS 1.3's CertificateVerify
//! proves it holds that certificate's private key. The server learns which pinned peer connected
//! from the certificate, never from anything the peer says.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pinned peer certificates, shared with the TLS verifier so `peer add` takes effect on reload.
/// Open connections one pinned peer may hold (a job uses one; `max_concurrent_jobs` and queued
/// jobs stay far below this).
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;

#[derive(Clone, Default)]
pub struct PinnedPeers(Arc<RwLock<Vec<PinEntry>>>, Arc<std::sync::Mutex<Vec<Tracked>>>);

/// An open connection: the fingerprint of the certificate it presented, and how to close it.
type Tracked = (String, std::sync::Weak<Revocation>);

/// One accepted certificate: the peer's name, the certificate, and for a previous pin during a
/// rotation the unix second it stops being accepted.
pub type PinEntry = (String, CertificateDer<'static>, Option<u64>);

impl PinnedPeers {
    /// Replaces the accepted certificates and closes every open connection whose certificate is
    /// no longer among them (a replaced, rotated-out or removed peer).
    pub fn replace(&self, peers: Vec<PinEntry>) {
        let kept: std::collections::HashSet<String> =
            peers.iter().map(|(_, c, _)| crate::identity::fingerprint(c)).collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = peers;
        let conns = self.1.lock().unwrap_or_else(|p| p.into_inner());
        for (fingerprint, revocation) in conns.iter() {
            if !kept.contains(fingerprint)
                && let Some(r) = revocation.upgrade()
            {
                r.revoke();
            }
        }
    }

    pub fn name_of(&self, cert: &CertificateDer<'_>) -> Option<String> {
        let now = crate::table::now_unix();
        let peers = self.0.read().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .find(|(_, c, until)| c.as_ref() == cert.as_ref() && until.is_none_or(|u| now < u))
            .map(|(n, _, _)| n.clone())
    }

    /// Tracks an open connection so that [`replace`](Self::replace) can close it; `None` if the
    /// peer already has [`MAX_CONNECTIONS_PER_PEER`] open.
    fn track(&self, fingerprint: &str) -> Option<Arc<Revocation>> {
        let revocation = Arc::new(Revocation::default());
        let mut conns = self.1.lock().unwrap_or_else(|p| p.into_inner());
        conns.retain(|(_, r)| r.strong_count() > 0);
        if conns.iter().filter(|(f, _)| f == fingerprint).count() >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        conns.push((fingerprint.to_string(), Arc::downgrade(&revocation)));
        Some(revocation)
    }

    /// Open connections tracked (tests).
    pub fn open_connections(&self) -> usize {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(_, r)| r.strong_count() > 0).count()
    }
}

/// Closes a connection from outside: the next read or write of the connection fails, which ends
/// the HTTP/2 connection and every stream (job) on it.
#[derive(Default)]
pub struct Revocation {
    revoked: std::sync::atomic::AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Revocation {
    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.revoked.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the peer's pin was replaced or removed"));
        }
        Ok(())
    }
}

impl fmt::Debug for PinnedPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinnedPeers")
    }
}

/// The handshake-signature half of both verifiers: TLS 1.3 signatures checked with the provider's
/// algorithms (this proves the peer holds the pinned certificate's key); TLS 1.2 never negotiated.
macro_rules! tls13_only_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Server side: client certificates must be pinned.
#[derive(Debug)]
struct PinnedClientVerifier {
    pinned: PinnedPeers,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.pinned.name_of(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::General("client certificate is not pinned by this node".into())),
        }
    }

    tls13_only_signatures!();
}

/// Client side: the server must present exactly the pinned certificate of the peer we dialled.
#[derive(Debug)]
struct PinnedServerVerifier {
    /// The peer's pin, and its previous one during a rotation window.
    expected: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.expected.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate does not match the one pinned for this peer".into()))
        }
    }

    tls13_only_signatures!();
}

/// TLS 1.3 server config requiring a pinned client certificate.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pinned: PinnedPeers,
) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = PinnedClientVerifier { pinned, algorithms: provider.signature_verification_algorithms };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert], key)
        .context("invalid TLS key or certificate")?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// TLS 1.3 client config that accepts only `peer_cert` and presents our certificate.
pub fn client_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    peer_certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier =
        PinnedServerVerifier { expected: peer_certs, algorithms: provider.signature_verification_algorithms };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![cert], key)
        .context("invalid TLS key or certificate")?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Bytes moved over one TCP connection (TLS records included).
#[derive(Debug, Default)]
pub struct WireCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl WireCounters {
    pub fn get(&self) -> (u64, u64) {
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// A transport wrapper that counts bytes in both directions.
pub struct Counting<T> {
    inner: T,
    counters: Arc<WireCounters>,
}

impl<T> Counting<T> {
    pub fn new(inner: T, counters: Arc<WireCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.counters.received.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Who is on the other end of an accepted peer connection (set as a request extension by tonic).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub name: String,
    /// The fingerprint of the certificate the peer presented on this connection (checked against
    /// the current pin at every request, so a replaced or removed pin stops an open connection).
    pub fingerprint: String,
    pub remote: SocketAddr,
    pub wire: Arc<WireCounters>,
}

/// An authenticated peer connection: TLS over a byte-counting TCP stream.
pub struct PeerConn {
    stream: tokio_rustls::server::TlsStream<Counting<tokio::net::TcpStream>>,
    info: PeerInfo,
    revocation: Arc<Revocation>,
}

impl PeerConn {
    /// Completes the TLS handshake on an accepted TCP stream and identifies the pinned peer.
    pub async fn accept(
        acceptor: &tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        pinned: &PinnedPeers,
    ) -> io::Result<PeerConn> {
        let wire = Arc::new(WireCounters::default());
        let stream = acceptor.accept(Counting::new(tcp, wire.clone())).await?;
        let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let not_pinned = || io::Error::new(io::ErrorKind::PermissionDenied, "peer certificate is not pinned");
        let cert = cert.ok_or_else(not_pinned)?;
        let name = pinned.name_of(&cert).ok_or_else(not_pinned)?;
        let fingerprint = crate::identity::fingerprint(&cert);
        let revocation = pinned.track(&fingerprint).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the peer has {MAX_CONNECTIONS_PER_PEER} connections open"),
            )
        })?;
        Ok(PeerConn { stream, info: PeerInfo { name, fingerprint, remote, wire }, revocation })
    }
}

impl tonic::transport::server::Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.revocation.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.revocation.revoked.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer's pin was replaced or removed",
            )));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
