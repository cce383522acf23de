//! `nostr-relayd healthcheck`: asks a running relay's `/health` whether it
//! is serving, for a container's HEALTHCHECK in an image without curl.
//!
//! It is a liveness probe of the relay on this machine: it sends nothing
//! secret and believes nothing but the status code, so an `https://` URL's
//! certificate is not verified (the relay's certificate names its public
//! host, never 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::Config;
use crate::config::ConfigError;

/// How long the whole check may take; Docker's own timeout is longer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `/health` on the address the relay listens on, reached from this
/// machine: a wildcard address (`0.0.0.0`, `::`) becomes the loopback of
/// its family; `https` when the relay serves TLS itself.
pub fn default_url(config: &Config) -> Result<String, ConfigError> {
    let listen = config.listen_addr()?;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let tls = !config.tls_cert.as_os_str().is_empty() && !config.tls_key.as_os_str().is_empty();
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}:{}/health", listen.port()))
}

/// GETs `url`; Ok when the answer is 200, else why not.
pub fn check(url: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        match tokio::time::timeout(TIMEOUT, status_of(url)).await {
            Err(_) => Err(format!("{url}: no answer within {TIMEOUT:?}")),
            Ok(Err(error)) => Err(format!("{url}: {error}")),
            Ok(Ok(StatusCode::OK)) => Ok(()),
            Ok(Ok(status)) => Err(format!("{url}: answered {status}")),
        }
    })
}

/// The status code of a GET on `url` (http or https).
async fn status_of(url: &str) -> Result<StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("only http:// and https:// URLs can be checked".into()),
    };
    let host = uri.host().ok_or("no host in the URL")?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to connect to.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if !tls {
        return get(tcp, &uri).await;
    }
    let name = ServerName::try_from(bare_host.to_owned())
        .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls_config()))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    get(stream, &uri).await
}

async fn get<S>(stream: S, uri: &Uri) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("nostr-relayd-healthcheck/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let status = sender
        .send_request(request)
        .await
        .map(|response| response.status())
        .map_err(|e| format!("HTTP failed: {e}"));
    driver.abort();
    status
}

/// rustls with ring (the crate's one provider) and no certificate check.
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Invariant: ring supports rustls' safe default versions (1.2, 1.3).
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Accepts whatever certificate the relay presents (see the module's
/// comment) but still checks the handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_reaches_the_listen_address_from_here() {
        let url = |listen: &str, tls: bool| {
            let mut config = Config {
                listen: listen.into(),
                ..Config::default()
            };
            if tls {
                config.tls_cert = "/etc/cert.pem".into();
                config.tls_key = "/etc/key.pem".into();
            }
            default_url(&config).unwrap()
        };
        assert_eq!(url("0.0.0.0:7777", false), "http://127.0.0.1:7777/health");
        assert_eq!(url("[::]:7777", false), "http://[::1]:7777/health");
        assert_eq!(url("10.1.2.3:80", false), "http://10.1.2.3:80/health");
        assert_eq!(url("[::1]:443", true), "https://[::1]:443/health");
    }

    #[test]
    fn only_http_urls_are_checked() {
        let error = check("ftp://127.0.0.1/health").unwrap_err();
        assert!(error.contains("http://"), "{error}");
        let error = check("http://127.0.0.1:1/health").unwrap_err();
        assert!(error.contains("cannot connect"), "{error}");
    }
}
