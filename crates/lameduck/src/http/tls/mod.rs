//! TLS for [`HttpServer`](super::HttpServer) and [`GrpcServer`](crate::grpc::GrpcServer)
//! (feature `tls`): rustls with the `ring` provider, a [`Tls`] source that is either a
//! `rustls::ServerConfig` as it is or a certificate chain and key read from PEM files and
//! re-read when they change, optional client certificates (mTLS), and the handshake inside the
//! drain's rules (`handshake`, which the connection's task runs).
//!
//! Why `ring`: it builds with cargo and the C compiler every Rust toolchain on Linux already
//! links with; `aws-lc-rs`, rustls's default, also wants CMake (and, on some targets, NASM),
//! which a fresh machine does not have.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::metrics;

mod handshake;

pub(crate) use handshake::handshake;

/// How often the files of [`Tls::from_pem_files`] are looked at, by default.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Where a server's TLS configuration comes from. Cheap to clone: clones share the loaded
/// configuration, so one kept aside can [`reload`](Self::reload) what the servers use.
///
/// ```no_run
/// use lameduck::http::{HttpServer, Tls};
///
/// let tls = Tls::from_pem_files("/etc/tls/tls.crt", "/etc/tls/tls.key")
///     .client_ca("/etc/tls/clients-ca.crt"); // mTLS: clients must present a certificate
/// let app: axum::Router = axum::Router::new();
/// let server = HttpServer::bind("0.0.0.0:8443", app).tls(tls.clone());
/// // Later, on demand (the files are also looked at every 2 s):
/// # async fn later(tls: Tls) {
/// if let Err(error) = tls.reload().await {
///     eprintln!("kept the old certificate: {error}");
/// }
/// # }
/// # drop(server);
/// ```
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    /// The configuration handshakes use now (each server sets its own ALPN protocols on
    /// it); `None` until the first server starts.
    current: RwLock<Option<Arc<ServerConfig>>>,
    /// What the files were at the last load (or the last failed attempt), to see a change.
    stamps: Mutex<Option<Vec<Stamp>>>,
    /// The watcher is running.
    watching: AtomicBool,
}

enum Source {
    Config(Arc<ServerConfig>),
    Files(Files),
}

#[derive(Clone)]
struct Files {
    cert_chain: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_auth_optional: bool,
    reload_every: Duration,
}

/// A TLS configuration that could not be loaded: what, which file, why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("TLS: cannot read {what} {path}: {source}")]
    Read {
        /// Which file it is ("certificate chain", "private key", "client CA bundle").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file held no PEM item of the kind expected (or a malformed one).
    #[error("TLS: {what} {path}: {problem} (hint: PEM, `-----BEGIN {pem}-----`)")]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The PEM label expected.
        pem: &'static str,
    },
    /// rustls refused the pair or the bundle (a key that does not match the certificate, an
    /// unsupported key type, a CA that is not one).
    #[error("TLS: certificate chain {cert_chain}, private key {key}: {source}")]
    Invalid {
        /// The chain's path (or `<ServerConfig>`).
        cert_chain: PathBuf,
        /// The key's path.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The client CA bundle could not make a verifier.
    #[error("TLS: client CA bundle {path}: {reason}")]
    ClientCa {
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Tls {
    /// Serves with this configuration as it is (certificates, client verification, versions,
    /// session resumption), with one addition: if it lists no ALPN protocols, the server's are
    /// set (`h2` and `http/1.1`, or the one protocol of an `http1_only` or `http2_only`
    /// server, and so `h2` for gRPC).
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self::new(Source::Config(config))
    }

    /// Serves the certificate chain and private key in these PEM files (the chain's leaf
    /// first, as cert-manager, certbot's `fullchain.pem` and Kubernetes TLS secrets have it),
    /// TLS 1.2 and 1.3. A pair that cannot be loaded, or whose key does not match its
    /// certificate, fails the server's start, naming the file.
    ///
    /// The files are looked at every 2 s ([`reload_every`](Self::reload_every)): when either
    /// changes (rewritten, replaced by a rename, or swapped under a symlink, as a Kubernetes
    /// secret update does), the pair is loaded again and new handshakes get it; open
    /// connections keep theirs. A pair that fails to load is logged with the reason, and the
    /// old one is kept.
    pub fn from_pem_files(cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::new(Source::Files(Files {
            cert_chain: cert_chain.into(),
            key: key.into(),
            client_ca: None,
            client_auth_optional: false,
            reload_every: RELOAD_EVERY,
        }))
    }

    fn new(source: Source) -> Self {
        Tls {
            inner: Arc::new(Inner {
                source,
                current: RwLock::new(None),
                stamps: Mutex::new(None),
                watching: AtomicBool::new(false),
            }),
        }
    }

    /// Requires client certificates signed by a CA of this PEM bundle (mTLS), re-read with
    /// the pair. A handler finds the client's chain in the request's extensions
    /// ([`PeerCertificates`]). Only for [`from_pem_files`](Self::from_pem_files); a
    /// `ServerConfig` carries its own verifier.
    pub fn client_ca(self, bundle: impl Into<PathBuf>) -> Self {
        self.map_files(|files| files.client_ca = Some(bundle.into()))
    }

    /// With [`client_ca`](Self::client_ca): also accepts clients that present no
    /// certificate (those that present one must present a valid one). Default: required.
    pub fn client_auth_optional(self, optional: bool) -> Self {
        self.map_files(|files| files.client_auth_optional = optional)
    }

    /// How often the files are looked at for a change (default 2 s; `Duration::ZERO`: never,
    /// only [`reload`](Self::reload)).
    pub fn reload_every(self, every: Duration) -> Self {
        self.map_files(|files| files.reload_every = every)
    }

    /// The same source with `edit` applied to its files: a new configuration, shared with
    /// none of the clones made before.
    fn map_files(self, edit: impl FnOnce(&mut Files)) -> Self {
        match &self.inner.source {
            Source::Files(files) => {
                let mut files = files.clone();
                edit(&mut files);
                Self::new(Source::Files(files))
            }
            Source::Config(_) => self,
        }
    }

    /// Loads the files again now, whether they changed or not: `Ok` once new handshakes get
    /// the new pair; on an error the old one is kept. A configuration given as it is has
    /// nothing to reload (`Ok`).
    pub async fn reload(&self) -> Result<(), TlsError> {
        let Source::Files(files) = &self.inner.source else {
            return Ok(());
        };
        let now = stamps(files).await;
        let loaded = self.load_as(files, now).await;
        metrics::tls_reloaded(loaded.is_ok());
        loaded
    }

    /// Loads the files, whose state is `now` (kept, so that a failure is said once for it).
    async fn load_as(&self, files: &Files, now: Vec<Stamp>) -> Result<(), TlsError> {
        *self
            .inner
            .stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
        let config = load(files).await?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(config));
        Ok(())
    }

    /// At a server's start: the configuration loaded (the first server's start loads it, and
    /// starts watching the files), and the acceptor its connections use.
    /// `alpn`: the protocols the server speaks, as ALPN names them.
    pub(crate) async fn start(&self, alpn: &[&[u8]]) -> Result<Acceptor, TlsError> {
        // A configuration given as it is keeps its own ALPN protocols, if it has any.
        let alpn: Option<Vec<Vec<u8>>> = match &self.inner.source {
            Source::Config(config) if !config.alpn_protocols.is_empty() => None,
            _ => Some(alpn.iter().map(|name| name.to_vec()).collect()),
        };
        let loaded = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        if !loaded {
            match &self.inner.source {
                Source::Config(config) => {
                    *self
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(config));
                }
                Source::Files(_) => self.reload().await?,
            }
        }
        self.watch();
        Ok(Acceptor {
            tls: self.clone(),
            alpn: alpn.map(Arc::from),
            made: Arc::default(),
        })
    }

    /// Starts looking at the files every `reload_every` (once, whoever asks first). The task
    /// ends when the last handle on this configuration is gone.
    fn watch(&self) {
        let Source::Files(files) = &self.inner.source else {
            return;
        };
        let every = files.reload_every;
        if every.is_zero() {
            return;
        }
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                Tls { inner }.look().await;
            }
        });
    }

    /// One look at the files: reloaded if they changed, and said.
    async fn look(&self) {
        let Source::Files(files) = &self.inner.source else {
            return;
        };
        let now = stamps(files).await;
        let changed = self
            .inner
            .stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            != Some(&now);
        if !changed {
            return;
        }
        let loaded = self.load_as(files, now).await;
        metrics::tls_reloaded(loaded.is_ok());
        match loaded {
            Ok(()) => tracing::info!(
                target: "lameduck",
                cert_chain = %files.cert_chain.display(),
                key = %files.key.display(),
                "TLS certificate reloaded: new handshakes get it"
            ),
            // Said once for each state of the files: the stamps were kept.
            Err(error) => tracing::warn!(
                target: "lameduck",
                cert_chain = %files.cert_chain.display(),
                "TLS files changed but did not load, the old certificate is kept: {error}"
            ),
        }
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.source {
            Source::Config(_) => f
                .debug_struct("Tls")
                .field("source", &"ServerConfig")
                .finish(),
            Source::Files(files) => f
                .debug_struct("Tls")
                .field("cert_chain", &files.cert_chain)
                .field("key", &files.key)
                .field("client_ca", &files.client_ca)
                .finish_non_exhaustive(),
        }
    }
}

/// What a server's connections take their handshakes from: the configuration of the moment,
/// with this server's ALPN protocols (one source may serve an HTTP server and a gRPC one).
#[derive(Clone)]
pub(crate) struct Acceptor {
    tls: Tls,
    /// The server's ALPN protocols (`None`: the configuration's own).
    alpn: Option<Arc<[Vec<u8>]>>,
    /// The acceptor made from the configuration last seen: made again only when it changes.
    made: Arc<Mutex<Option<Made>>>,
}

/// An acceptor, and the configuration it was made from.
type Made = (Arc<ServerConfig>, TlsAcceptor);

impl Acceptor {
    /// The acceptor with the configuration of this moment.
    pub(crate) fn now(&self) -> Option<TlsAcceptor> {
        let current = self
            .tls
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((from, acceptor)) = made.as_ref()
            && Arc::ptr_eq(from, &current)
        {
            return Some(acceptor.clone());
        }
        let acceptor = match &self.alpn {
            None => TlsAcceptor::from(Arc::clone(&current)),
            Some(alpn) => {
                let mut config = (*current).clone();
                config.alpn_protocols = alpn.to_vec();
                TlsAcceptor::from(Arc::new(config))
            }
        };
        *made = Some((current, acceptor.clone()));
        Some(acceptor)
    }
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tls.fmt(f)
    }
}

/// The certificate chain a client presented (mTLS), leaf first: in the extensions of each of
/// its requests when it presented one.
///
/// ```
/// use lameduck::http::PeerCertificates;
///
/// async fn whoami(certs: Option<axum::Extension<PeerCertificates>>) -> String {
///     match certs {
///         Some(certs) => format!("{} bytes of client certificate\n", certs.leaf().len()),
///         None => "anonymous\n".to_owned(),
///     }
/// }
/// # let _ = whoami;
/// ```
#[derive(Debug, Clone)]
pub struct PeerCertificates(Arc<[CertificateDer<'static>]>);

impl PeerCertificates {
    pub(crate) fn new(chain: &[CertificateDer<'static>]) -> Option<Self> {
        (!chain.is_empty()).then(|| PeerCertificates(chain.into()))
    }

    /// The whole chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// The client's own certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // Never empty: `new` refuses an empty chain.
        &self.0[0]
    }
}

/// What a file was at one look: enough to see it rewritten, renamed over, or swapped under a
/// symlink (the metadata of the file a path leads to now).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

async fn stamp(path: &Path) -> Option<Stamp> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        },
    })
}

async fn stamps(files: &Files) -> Vec<Stamp> {
    let mut all = Vec::with_capacity(3);
    for path in [
        Some(&files.cert_chain),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        // A missing file is a state too: its return is a change.
        all.push(stamp(path).await.unwrap_or(Stamp {
            modified: None,
            len: u64::MAX,
            #[cfg(unix)]
            inode: (0, 0),
        }));
    }
    all
}

async fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
}

/// The certificates of a PEM file, at least one.
fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |problem: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        problem,
        pem: "CERTIFICATE",
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".to_owned()));
    }
    Ok(certs)
}

/// The pair (and client CA bundle) of `files`, as a server configuration.
async fn load(files: &Files) -> Result<ServerConfig, TlsError> {
    let chain = certificates(
        "certificate chain",
        &files.cert_chain,
        &read("certificate chain", &files.cert_chain).await?,
    )?;
    let key_pem = read("private key", &files.key).await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: files.key.clone(),
        problem: format!("no usable private key in it: {e}"),
        pem: "PRIVATE KEY",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |source| TlsError::Invalid {
        cert_chain: files.cert_chain.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bundle = read("client CA bundle", path).await?;
            let mut roots = RootCertStore::empty();
            for ca in certificates("client CA bundle", path, &bundle)? {
                roots.add(ca).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_auth_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(invalid)
}
