//! TLS for `https://` URLs (the load, the audit's reads and writes, `--ready-url`, `--front`)
//! and `wss://` ones (`--ws`, offering only `http/1.1` by ALPN):
//! rustls with `ring`, trusting the CAs of `--cacert`, or nothing at all with `--insecure`
//! (the certificate is not checked; the handshake's signatures still are). ALPN offers `h2`
//! and `http/1.1` and the connection speaks what the server picks (`h2` only with `--http2`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::args::DrillArgs;

/// How the drill trusts TLS servers: `None` when neither `--cacert` nor `--insecure` was given
/// (an `https://` URL is then an error).
#[derive(Clone, Default)]
pub(crate) struct Trust(Option<Connectors>);

#[derive(Clone)]
struct Connectors {
    /// ALPN `h2` and `http/1.1`.
    either: TlsConnector,
    /// ALPN `h2` only (`--http2`).
    h2: TlsConnector,
    /// ALPN `http/1.1` only (`wss://`: the upgrade is HTTP/1.1's).
    http1: TlsConnector,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Trust(tls)"
        } else {
            "Trust(none)"
        })
    }
}

impl Trust {
    /// From `--cacert` and `--insecure`.
    pub(crate) fn from_args(args: &DrillArgs) -> Result<Trust, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = if let Some(path) = &args.cacert {
            builder
                .with_root_certificates(roots(path)?)
                .with_no_client_auth()
        } else if args.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth()
        } else {
            return Ok(Trust(None));
        };
        let with = |alpn: &[&[u8]]| {
            let mut config = config.clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        Ok(Trust(Some(Connectors {
            either: with(&[b"h2", b"http/1.1"]),
            h2: with(&[b"h2"]),
            http1: with(&[b"http/1.1"]),
        })))
    }

    /// Whether `https://` URLs can be used.
    pub(crate) fn usable(&self) -> bool {
        self.0.is_some()
    }

    /// The TLS handshake on `tcp` with `host`: the stream, and whether the server chose h2.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
        http2: bool,
    ) -> Option<(TlsStream<TcpStream>, bool)> {
        let connectors = self.0.as_ref()?;
        let connector = if http2 {
            &connectors.h2
        } else {
            &connectors.either
        };
        let name = ServerName::try_from(host.to_owned()).ok()?;
        let stream = connector.connect(name, tcp).await.ok()?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Some((stream, h2))
    }
}

impl Trust {
    /// The TLS handshake on `tcp` with `host`, offering only `http/1.1` (for a WebSocket's
    /// upgrade); why not, if it failed.
    pub(crate) async fn connect_http1(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let connectors = self
            .0
            .as_ref()
            .ok_or("no TLS trust (--cacert, --insecure)")?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("`{host}`: {e}"))?;
        connectors
            .http1
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    }
}

/// The CAs of a PEM bundle.
fn roots(path: &Path) -> Result<RootCertStore, String> {
    let bad = |e: &dyn fmt::Display| format!("--cacert {}: {e}", path.display());
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(
            &"no certificate in it (PEM, `-----BEGIN CERTIFICATE-----`)",
        ));
    }
    Ok(roots)
}

/// `--insecure`: any certificate is taken, but the handshake's signatures are still verified
/// with it (so the server does hold the key of the certificate it sent).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
