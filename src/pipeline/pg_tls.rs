//! TLS for PostgreSQL sources, as the connection URL's `sslmode` says.
//!
//! - `disable`: plain TCP.
//! - `prefer` (tokio-postgres's default): TLS when the server offers it, else plain.
//! - `require`: TLS or no connection. As libpq does without a root certificate, the server's
//!   certificate is not verified: the link is encrypted against eavesdropping, not against a
//!   man in the middle.
//! - `verify-ca`, `verify-full`: TLS with the server's certificate verified against the
//!   Mozilla roots (`webpki-roots`) or, with `sslrootcert=FILE` in the URL, against the PEM
//!   certificates of that file; both check the host name (rustls always does).
//!
//! rustls with the *ring* provider: no OpenSSL on the machine, a small build. tokio-postgres
//! parses `disable`, `prefer` and `require` itself; the verifying modes and `sslrootcert` are
//! taken out of the URL here and the connection is made with `require` and a verifying
//! connector. Channel binding is not offered (SCRAM works without it).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// Encrypt only (`prefer`, `require`).
    None,
    /// Chain and host name (`verify-ca`, `verify-full`).
    Full,
}

/// The URL as tokio-postgres reads it, and how to verify the server. Only the query
/// parameters `sslmode=verify-ca|verify-full` and `sslrootcert` are rewritten; any other
/// parse error is tokio-postgres's. Errors never quote the URL (it may hold a password).
pub(super) fn split_url(url: &str) -> (String, Verify, Option<String>) {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) if url.contains("://") => (base, query),
        _ => {
            // The key=value form: `host=… sslmode=verify-full`.
            let mut verify = Verify::None;
            let mut root = None;
            let mut kept = Vec::new();
            for part in url.split_whitespace() {
                match part.split_once('=') {
                    Some(("sslmode", "verify-ca" | "verify-full")) => {
                        verify = Verify::Full;
                        kept.push("sslmode=require".to_string());
                    }
                    Some(("sslrootcert", file)) => root = Some(file.to_string()),
                    _ => kept.push(part.to_string()),
                }
            }
            return (kept.join(" "), verify, root);
        }
    };
    let mut verify = Verify::None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                verify = Verify::Full;
                kept.push("sslmode=require".to_string());
            }
            Some(("sslrootcert", file)) => root = Some(file.to_string()),
            _ => kept.push(pair.to_string()),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, verify, root)
}

/// The connector for `verify`, with `root` (a PEM file) as the trusted roots if given.
pub(super) fn connector(verify: Verify, root: Option<&str>) -> Result<MakeRustls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        Verify::Full => {
            let mut roots = RootCertStore::empty();
            match root {
                Some(file) => {
                    let pem = std::fs::read(file)
                        .map_err(|e| format!("cannot read sslrootcert {file}: {e}"))?;
                    let mut added = 0;
                    for cert in rustls_pemfile_certs(&pem) {
                        roots
                            .add(cert)
                            .map_err(|e| format!("sslrootcert {file}: {e}"))?;
                        added += 1;
                    }
                    if added == 0 {
                        return Err(format!("sslrootcert {file} holds no PEM certificate"));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(MakeRustls(Arc::new(config)))
}

/// The DER certificates of a PEM text (`-----BEGIN CERTIFICATE-----` blocks).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(end) = body.find(END) else { break };
        let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(CertificateDer::from(der));
        }
        rest = &body[end + END.len()..];
    }
    out
}

/// Accepts any certificate but still checks the handshake's signatures: `sslmode=require`.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook over rustls.
#[derive(Clone)]
pub(super) struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect(
            tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        ))
    }
}

pub(super) struct Connect(tokio_rustls::TlsConnector, ServerName<'static>);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect(connector, name) = self;
        Box::pin(async move { connector.connect(name, stream).await.map(Stream) })
    }
}

/// A TLS stream to the server.
pub(super) struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_and_root_files_are_taken_out_of_the_url() {
        let (url, verify, root) = split_url(
            "postgres://u:p@db:5432/x?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a",
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/x?sslmode=require&application_name=a"
        );
        assert_eq!((verify, root.as_deref()), (Verify::Full, Some("/ca.pem")));
        let (url, verify, root) = split_url("postgres://db/x?sslmode=disable");
        assert_eq!(url, "postgres://db/x?sslmode=disable");
        assert_eq!((verify, root), (Verify::None, None));
        let (url, verify, _) = split_url("host=db sslmode=verify-ca user=u");
        assert_eq!(url, "host=db sslmode=require user=u");
        assert_eq!(verify, Verify::Full);
        assert_eq!(split_url("postgres://db/x").0, "postgres://db/x");
    }

    #[test]
    fn connectors_build_for_every_mode() {
        assert!(connector(Verify::None, None).is_ok());
        assert!(connector(Verify::Full, None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "no certificate").unwrap();
        let error = connector(Verify::Full, empty.to_str()).err().unwrap();
        assert!(error.contains("no PEM certificate"), "{error}");
    }
}
