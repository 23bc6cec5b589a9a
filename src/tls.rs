//! TLS on the native and Kafka listeners, the clients and the broker-to-broker links (issue 14,
//! ADR 0028), with rustls (ring provider) through tokio-rustls.
//!
//! Every connection Keel makes or accepts is a [`Stream`]: plain TCP, or TLS over TCP on either side.
//! The configuration comes from PEM files: a broker's certificate chain and key (`tls_cert`,
//! `tls_key`), and the CA bundle it trusts (`tls_ca`) for the brokers it connects to and, with
//! `tls_client_auth`, for the clients it accepts (mutual TLS). A broker presents its own certificate
//! when it connects to a peer, so a cluster with client authentication authenticates its links too.
//!
//! Names: a client checks the broker's certificate against the host part of the address it dialled
//! (an IP address must be an IP SAN of the certificate, a name a DNS SAN).
//!
//! The simulation compiles this module but never configures TLS: it would add nothing to what the
//! scenarios check (the bytes in between are the same frames) and its handshakes draw randomness
//! outside `crate::random`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a client connects with (see [`client_config`]).
pub type ClientTls = Arc<rustls::ClientConfig>;

/// How long a TLS handshake may take, on either side, before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection: plain TCP, or TLS as the accepting or the connecting side.
pub enum Stream {
    Plain(TcpStream),
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Accepted(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Stream::Connected(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Accepted(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Stream::Connected(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Accepted(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Stream::Connected(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Accepted(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Stream::Connected(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a TLS setup cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the {what} {path} holds no PEM {kind}")]
    Empty { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("the {what} {path} is not valid PEM: {reason}")]
    Pem { what: &'static str, path: PathBuf, reason: String },
    #[error("invalid TLS setup: {0}")]
    Rustls(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (a chain or a CA bundle), at least one.
pub fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let certs = certs.map_err(|error| TlsError::Pem { what, path: path.into(), reason: error.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.into(), kind: "certificate" });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty { what, path: path.into(), kind: "private key" },
        other => TlsError::Pem { what, path: path.into(), reason: other.to_string() },
    })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("CA bundle", ca)? {
        roots.add(cert).map_err(|error| TlsError::Rustls(format!("CA bundle {}: {error}", ca.display())))?;
    }
    Ok(roots)
}

/// A certificate chain and its key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a listener presents and whom it asks for a certificate: with `client_ca`, every client must
/// present a certificate that CA bundle vouches for (mutual TLS).
pub fn server_config(identity: &Identity, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls(error.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|error| TlsError::Rustls(format!("client verifier: {error}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config =
        builder.with_single_cert(read_certs("certificate", &identity.cert)?, read_key("key", &identity.key)?).map_err(
            |error| TlsError::Rustls(format!("{} and {}: {error}", identity.cert.display(), identity.key.display())),
        )?;
    Ok(Arc::new(config))
}

/// What a client (or a broker dialling a peer) trusts, and the certificate it presents when asked.
pub fn client_config(ca: &Path, identity: Option<&Identity>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls(error.to_string()))?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(read_certs("certificate", &identity.cert)?, read_key("key", &identity.key)?)
            .map_err(|error| TlsError::Rustls(format!("client certificate: {error}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The TLS name to check for `addr` (`host:port`, `[v6]:port`): its host as an IP address or a DNS
/// name.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?} is not a TLS name: {error}")))
}

/// The accepting side's handshake, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn accept(config: &Arc<rustls::ServerConfig>, stream: TcpStream) -> io::Result<Stream> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(accepted) => Ok(Stream::Accepted(Box::new(accepted?))),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// The connecting side's handshake with the broker at `addr`, bounded by [`HANDSHAKE_TIMEOUT`];
/// without a config, the plain stream.
pub async fn connect(config: Option<&Arc<rustls::ClientConfig>>, addr: &str, stream: TcpStream) -> io::Result<Stream> {
    let Some(config) = config else { return Ok(Stream::Plain(stream)) };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = server_name(addr)?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
        Ok(connected) => Ok(Stream::Connected(Box::new(connected?))),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_the_host_part() {
        assert!(matches!(server_name("127.0.0.1:9400").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:9400").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("broker-1.example:9400").unwrap(), ServerName::DnsName(_)));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn missing_and_empty_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_certs("certificate", &dir.path().join("nope.pem")).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read the certificate"), "{missing}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let error = read_certs("certificate", &empty).unwrap_err();
        assert!(error.to_string().contains("holds no PEM certificate"), "{error}");
        let error = read_key("key", &empty).unwrap_err();
        assert!(error.to_string().contains("holds no PEM private key"), "{error}");
    }
}
