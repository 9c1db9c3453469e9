//! TLS for `NBD_OPT_STARTTLS`: a [`row_nbd::TlsAcceptor`] over tokio-rustls
//! (the `ring` provider; TLS 1.2 and 1.3).
//!
//! Certificates and keys are PEM files, as qemu-nbd and nbdkit take them:
//! the server certificate chain (leaf first), its private key (PKCS#8,
//! PKCS#1 or SEC1) and, for mutual TLS, the CA bundle that client
//! certificates must chain to. With a CA every client must present a
//! certificate signed by it; without one no client certificate is asked for.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use futures::future::BoxFuture;
use row_nbd::{BoxStream, TlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::WebPkiClientVerifier;

/// Where the PEM files of a TLS setup are, and the policy.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate chain, leaf first.
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (mutual TLS);
    /// `None` = clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
    /// FORCEDTLS (every option before `STARTTLS` is refused with
    /// `NBD_REP_ERR_TLS_REQD`) rather than optional TLS.
    pub required: bool,
}

impl TlsFiles {
    /// Loads the files and builds the server's TLS policy.
    pub fn load(&self) -> anyhow::Result<TlsConfig> {
        let acceptor =
            RustlsAcceptor::from_pem_files(&self.cert, &self.key, self.client_ca.as_deref())?;
        Ok(TlsConfig {
            required: self.required,
            acceptor: Some(Arc::new(acceptor)),
        })
    }
}

/// Server side of the TLS upgrade, over tokio-rustls.
#[derive(Clone)]
pub struct RustlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    mutual: bool,
}

impl fmt::Debug for RustlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsAcceptor")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

impl RustlsAcceptor {
    /// An acceptor over a ready rustls configuration.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        RustlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
            mutual: false,
        }
    }

    /// Loads a certificate chain, its key and (for mutual TLS) the CA bundle
    /// client certificates must chain to; TLS 1.2 and 1.3 with the `ring`
    /// provider.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let chain = read_certs(cert).context("reading the TLS certificate")?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow!("{}: {e}", key.display()))
            .context("reading the TLS private key")?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca).context("reading the TLS client CA")? {
                    roots
                        .add(c)
                        .map_err(|e| anyhow!("{}: {e}", ca.display()))
                        .context("loading the TLS client CA")?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .context("TLS client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .context("TLS certificate and key do not match or are unusable")?;
        Ok(RustlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

impl row_nbd::TlsAcceptor for RustlsAcceptor {
    fn accept(&self, stream: BoxStream) -> BoxFuture<'static, io::Result<BoxStream>> {
        let acceptor = self.inner.clone();
        Box::pin(async move {
            let tls = acceptor.accept(stream).await?;
            Ok(Box::new(tls) as BoxStream)
        })
    }
}
