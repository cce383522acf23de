//! Native TLS (`tls_cert` / `tls_key`): the relay serves `wss://` and
//! `https://` itself, for operators without a reverse proxy.
//!
//! The handshake runs on each connection's own task, after its slot under
//! `max_connections` was taken, and within [`HANDSHAKE_TIMEOUT`]: a client
//! that never finishes it holds a slot no longer than one that never sends
//! its HTTP request head, and the accept loop never waits for it. A failed
//! handshake (a plaintext client, garbage, a client that distrusts the
//! certificate) is logged at `debug` only, like any other bad input.
//!
//! The certificate can be replaced while the relay runs (certbot renewals):
//! [`Tls::reload`] re-reads both files and swaps the rustls configuration
//! atomically. Connections already open keep the session they have; new
//! ones get the new certificate. A pair that does not load is logged and
//! the old one stays.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// How long a client may take to complete the TLS handshake: the same
/// allowance as for sending the HTTP request head (slowloris).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The two PEM files a TLS relay serves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// The leaf's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `config` names; `None` for a plain `ws://` relay. (Config
    /// validation has made sure that both or neither are set.)
    pub fn from_config(config: &Config) -> Option<TlsFiles> {
        let set = |path: &Path| !path.as_os_str().is_empty();
        (set(&config.tls_cert) && set(&config.tls_key)).then(|| TlsFiles {
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
        })
    }
}

/// A certificate pair that cannot be served, naming the key and the file.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The relay's TLS server side: the rustls configuration in force, swapped
/// whole on reload, and the files it came from.
pub struct Tls {
    server: ArcSwap<ServerConfig>,
    /// The files in force; also serializes reloads, so that two at once
    /// cannot install an older pair last.
    files: Mutex<TlsFiles>,
}

impl Tls {
    /// Loads the pair `config` names; `Ok(None)` when TLS is off. An error
    /// names the file at fault, for a clear start-up failure.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        let Some(files) = TlsFiles::from_config(config) else {
            return Ok(None);
        };
        let loaded = load(&files)?;
        tracing::info!(
            cert = %files.cert.display(),
            subject = %loaded.summary.subject,
            serial = %loaded.summary.serial,
            not_after = %loaded.summary.not_after,
            "serving TLS (wss://, https://)"
        );
        Ok(Some(Tls {
            server: ArcSwap::from_pointee(loaded.server),
            files: Mutex::new(files),
        }))
    }

    /// Re-reads the certificate and key files in force and serves the new
    /// pair to new connections. A pair that does not load (half-written,
    /// mismatched, unreadable) is logged as an error and the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        // The guard is dropped at the end of this statement: reload_from
        // takes the lock again.
        let files = self.lock_files().clone();
        self.reload_from(files)
    }

    /// SIGHUP with a re-read `relay.toml`: reloads the files it names (which
    /// may be new paths). Switching between plain and TLS is not done at run
    /// time (the listener's kind is fixed at start): that is logged, and the
    /// current files are reloaded.
    pub fn reload_for(&self, config: &Config) -> Result<(), TlsError> {
        match TlsFiles::from_config(config) {
            Some(files) => self.reload_from(files),
            None => {
                tracing::warn!(
                    "tls_cert and tls_key are now empty, but switching from TLS to plain \
                     ws:// needs a restart; still serving TLS"
                );
                self.reload()
            }
        }
    }

    fn reload_from(&self, files: TlsFiles) -> Result<(), TlsError> {
        let mut current = self.lock_files();
        match load(&files) {
            Ok(loaded) => {
                self.server.store(Arc::new(loaded.server));
                tracing::info!(
                    cert = %files.cert.display(),
                    subject = %loaded.summary.subject,
                    serial = %loaded.summary.serial,
                    not_after = %loaded.summary.not_after,
                    "tls certificate reloaded"
                );
                *current = files;
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "tls certificate reload failed; keeping the old certificate");
                Err(error)
            }
        }
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, TlsFiles> {
        // A panic while holding the lock cannot leave the paths half-set
        // (they are replaced whole), so a poisoned lock is still good.
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The TLS handshake with `peer`, bounded by [`HANDSHAKE_TIMEOUT`];
    /// `None` (logged at debug) when it fails or times out.
    async fn handshake(&self, stream: TcpStream, peer: SocketAddr) -> Option<Stream> {
        let acceptor = TlsAcceptor::from(self.server.load_full());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(Stream::Tls(Box::new(stream))),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "tls handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                None
            }
        }
    }
}

/// An accepted connection as HTTP sees it: the TCP stream itself, or TLS
/// over it. One type, so that hyper and the WebSocket code do not care.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is a few kilobytes, a plain stream a few words.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The accepted `stream` ready for HTTP: wrapped in TLS when `tls` is
    /// set, after a handshake that gives up at shutdown. `None` when the
    /// handshake failed; the connection is then simply dropped.
    pub async fn open(
        tls: Option<&Tls>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: &mut Shutdown,
    ) -> Option<Stream> {
        let Some(tls) = tls else {
            return Some(Stream::Plain(stream));
        };
        tokio::select! {
            stream = tls.handshake(stream, peer) => stream,
            _ = shutdown.recv() => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A pair read, checked and ready to serve.
struct Loaded {
    server: ServerConfig,
    summary: Summary,
}

/// Reads both PEM files and builds the rustls configuration: ring, TLS 1.2
/// and 1.3, ALPN `http/1.1` (the WebSocket upgrade is HTTP/1.1). rustls
/// checks that the key belongs to the leaf certificate.
fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let cert_file = files.cert.display();
    let key_file = files.key.display();
    let cert_pem = std::fs::read(&files.cert)
        .map_err(|e| TlsError(format!("tls_cert: cannot read {cert_file}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("tls_cert: {cert_file} is not valid PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError(format!(
            "tls_cert: {cert_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    };
    // Only for the log: rustls below is the judge of the certificate.
    let summary = Summary::of(leaf).unwrap_or_default();
    let key_pem = std::fs::read(&files.key)
        .map_err(|e| TlsError(format!("tls_key: cannot read {key_file}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError(format!(
            "tls_key: {key_file} holds no PEM private key (PKCS#8, RSA or SEC1)"
        )),
        e => TlsError(format!("tls_key: {key_file} is not valid PEM: {e}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError(format!(
                "tls_key: {key_file} does not match the certificate in tls_cert {cert_file}"
            )),
            rustls::Error::InvalidCertificate(e) => {
                TlsError(format!("tls_cert: {cert_file}: invalid certificate: {e}"))
            }
            e => TlsError(format!(
                "tls_key: {key_file} cannot be used with tls_cert {cert_file}: {e}"
            )),
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded { server, summary })
}

/// What the log says about a certificate, so that an operator sees which
/// one is served and when it runs out.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    /// The subject's common name (empty if it has none).
    subject: String,
    /// The serial number in hex.
    serial: String,
    /// notAfter as `YYYY-MM-DD HH:MM:SS UTC`.
    not_after: String,
}

impl Summary {
    /// Reads the fields from the DER of an X.509 certificate: a few steps
    /// into `tbsCertificate` (RFC 5280 §4.1). `None` for anything else.
    fn of(cert: &[u8]) -> Option<Summary> {
        let (SEQUENCE, certificate, _) = der_element(cert)? else {
            return None;
        };
        let (SEQUENCE, tbs, _) = der_element(certificate)? else {
            return None;
        };
        let (mut tag, mut value, mut rest) = der_element(tbs)?;
        if tag == VERSION {
            (tag, value, rest) = der_element(rest)?;
        }
        if tag != INTEGER {
            return None;
        }
        // A positive INTEGER may carry a leading zero byte; serials are shown
        // without it, as openssl shows them.
        let significant = value.iter().position(|b| *b != 0).unwrap_or(value.len());
        let serial = hex::encode(&value[significant.min(value.len().saturating_sub(1))..]);
        let (_signature, _, rest) = der_element(rest)?;
        let (_issuer, _, rest) = der_element(rest)?;
        let (SEQUENCE, validity, rest) = der_element(rest)? else {
            return None;
        };
        let (SEQUENCE, subject, _) = der_element(rest)? else {
            return None;
        };
        let (_, _, validity) = der_element(validity)?;
        let (time_tag, not_after, _) = der_element(validity)?;
        Some(Summary {
            subject: common_name(subject).unwrap_or_default(),
            serial,
            not_after: format_time(time_tag, not_after)?,
        })
    }
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` at the start of tbsCertificate.
const VERSION: u8 = 0xa0;
/// 2.5.4.3, the commonName attribute.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: its tag, its contents and what follows it. `None` for
/// truncated input or a length DER does not allow here (over 4 bytes).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// The first commonName of a Name (a SEQUENCE of SETs of attributes).
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (SET, set, rest) = der_element(name)? else {
            return None;
        };
        name = rest;
        let (SEQUENCE, attribute, _) = der_element(set)? else {
            return None;
        };
        let (OID, oid, value) = der_element(attribute)? else {
            return None;
        };
        if oid == COMMON_NAME {
            let (_string_type, text, _) = der_element(value)?;
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// `YYYY-MM-DD HH:MM:SS UTC`.
fn format_time(tag: u8, time: &[u8]) -> Option<String> {
    let time = std::str::from_utf8(time).ok()?;
    let digits = time.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // RFC 5280 §4.1.2.5.1: YY < 50 is 20YY.
        (UTC_TIME, 12) if digits < "50" => format!("20{digits}"),
        (UTC_TIME, 12) => format!("19{digits}"),
        (GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &full[0..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(name: &str, serial: u64) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(2031, 7, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn the_summary_names_subject_serial_and_expiry() {
        let (cert, _) = certificate("relay.example.com", 0x1234);
        let summary = Summary::of(cert.der()).unwrap();
        assert_eq!(
            summary,
            Summary {
                subject: "relay.example.com".into(),
                serial: "1234".into(),
                not_after: "2031-07-04 00:00:00 UTC".into(),
            }
        );
    }

    #[test]
    fn the_summary_refuses_what_is_not_a_certificate() {
        let (cert, _) = certificate("relay.example.com", 7);
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            // Truncations never panic; most are refused.
            let _ = Summary::of(&der[..cut]);
        }
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(b"garbage"), None);
        assert_eq!(Summary::of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn times_before_and_after_2050() {
        assert_eq!(
            format_time(UTC_TIME, b"491231235959Z").as_deref(),
            Some("2049-12-31 23:59:59 UTC")
        );
        assert_eq!(
            format_time(UTC_TIME, b"500101000000Z").as_deref(),
            Some("1950-01-01 00:00:00 UTC")
        );
        assert_eq!(
            format_time(GENERALIZED_TIME, b"20991231235959Z").as_deref(),
            Some("2099-12-31 23:59:59 UTC")
        );
        assert_eq!(format_time(UTC_TIME, b"4912312359Z"), None);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate("localhost", 1);
        let (_, other_key) = certificate("localhost", 2);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert_path = write("cert.pem", &cert.pem());
        let key_path = write("key.pem", &key.serialize_pem());
        let files = |cert: &Path, key: &Path| TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        assert!(load(&files(&cert_path, &key_path)).is_ok());
        let error = |cert: &Path, key: &Path| match load(&files(cert, key)) {
            Ok(_) => panic!("{} + {} loaded", cert.display(), key.display()),
            Err(error) => error.0,
        };

        let other = write("other.pem", &other_key.serialize_pem());
        let message = error(&cert_path, &other);
        assert!(message.starts_with("tls_key:"), "{message}");
        assert!(message.contains("other.pem"), "{message}");
        assert!(message.contains("does not match"), "{message}");

        let missing = dir.path().join("missing.pem");
        let message = error(&missing, &key_path);
        assert!(message.starts_with("tls_cert: cannot read"), "{message}");
        assert!(message.contains("missing.pem"), "{message}");

        let message = error(&key_path, &key_path);
        assert!(message.starts_with("tls_cert:"), "{message}");
        assert!(message.contains("no PEM certificate"), "{message}");

        let message = error(&cert_path, &cert_path);
        assert!(message.starts_with("tls_key:"), "{message}");
        assert!(message.contains("no PEM private key"), "{message}");

        let broken = write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let message = error(&broken, &key_path);
        assert!(message.starts_with("tls_cert:"), "{message}");
        assert!(message.contains("broken.pem"), "{message}");
    }
}
