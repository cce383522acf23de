//! Native TLS (`tls_cert` / `tls_key`): wss:// and https:// served by the
//! relay itself, with certificates made here by rcgen and clients that trust
//! exactly those certificates. Bad clients fail their handshake without
//! hurting anyone else; the certificate is replaced while connections run.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use nostr_relayd::{Config, RunningRelay};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::{Connector, MaybeTlsStream, client_async_tls_with_config};

/// A certificate with its key, as PEM (what the relay reads) and DER (what
/// a client is shown).
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// A self-signed certificate for `localhost` and 127.0.0.1; `name` and
/// `serial` tell two of them apart.
fn self_signed(name: &str, serial: u64) -> Pair {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(name, serial).self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn leaf_params(name: &str, serial: u64) -> CertificateParams {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(SerialNumber::from(serial));
    params
}

/// The two PEM files a relay is configured with, in a directory of their own.
struct Files {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(pair: &Pair) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("fullchain.pem"),
            key: dir.path().join("privkey.pem"),
            dir,
        };
        files.write(pair);
        files
    }

    /// Replaces both files, as a certificate renewal does.
    fn write(&self, pair: &Pair) {
        std::fs::write(&self.cert, &pair.cert_pem).unwrap();
        std::fs::write(&self.key, &pair.key_pem).unwrap();
    }

    fn configure(&self, config: &mut Config) {
        config.tls_cert = self.cert.clone();
        config.tls_key = self.key.clone();
    }
}

/// A client configuration that trusts exactly `roots`.
fn trusting(roots: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from(root.to_vec())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A relay on port 0 serving TLS from `files`, with `adjust` applied.
async fn start_tls(files: &Files, adjust: impl FnOnce(&mut Config)) -> (RunningRelay, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    files.configure(&mut config);
    adjust(&mut config);
    config.validate().unwrap();
    let relay = nostr_relayd::start(config).await.expect("relay starts");
    (relay, dir)
}

/// `wss://localhost:PORT/` (over TCP to 127.0.0.1, so that `localhost`
/// resolving to ::1 first does not matter).
fn wss_url(addr: SocketAddr) -> String {
    format!("wss://localhost:{}/", addr.port())
}

/// Opens a WebSocket over TLS, or says why it could not.
async fn try_wss(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let connect =
        client_async_tls_with_config(wss_url(addr), tcp, None, Some(Connector::Rustls(tls)));
    let (ws, _) = tokio::time::timeout(ANSWER, connect)
        .await
        .expect("the TLS WebSocket handshake ends in time")?;
    Ok(Client::from_ws(ws))
}

async fn wss(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Client {
    try_wss(addr, tls).await.expect("wss:// connects")
}

/// The certificate the relay presented to `client`, and the ALPN protocol
/// agreed on.
fn presented(client: &Client) -> (Vec<u8>, Option<Vec<u8>>) {
    let MaybeTlsStream::Rustls(tls) = client.ws.get_ref() else {
        panic!("not a TLS connection");
    };
    let session = tls.get_ref().1;
    let leaf = session.peer_certificates().expect("a certificate")[0].to_vec();
    (leaf, session.alpn_protocol().map(<[u8]>::to_vec))
}

/// One HTTP/1.1 request over TLS; returns the status line and the body.
async fn https_get(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    headers: &str,
) -> (String, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = tokio::time::timeout(ANSWER, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\n{headers}Connection: close\r\n\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The relay closes after the response (Connection: close).
    tokio::time::timeout(ANSWER, stream.read_to_end(&mut response))
        .await
        .expect("the response in time")
        .expect("a clean TLS close");
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[tokio::test]
async fn events_go_in_and_come_back_over_wss() {
    let pair = self_signed("relay one", 1);
    let files = Files::new(&pair);
    let (relay, _db) = start_tls(&files, |_| {}).await;
    let mut client = wss(relay.local_addr, trusting(&[&pair.der])).await;
    let (leaf, alpn) = presented(&client);
    assert_eq!(leaf, pair.der);
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    let keys = Keys::generate();
    let event = note(&keys, "hello over wss");
    assert_eq!(client.publish(&event).await, (true, String::new()));
    let events = client
        .req(
            "back",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], event.id.to_hex());
    relay.shutdown().await;
}

#[tokio::test]
async fn the_full_chain_in_tls_cert_is_served() {
    // root → intermediate → leaf; the client trusts the root only, so the
    // handshake works only if the relay sends the intermediate too.
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "test root");
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate().unwrap()).unwrap();
    let mut intermediate_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    intermediate_params
        .distinguished_name
        .push(DnType::CommonName, "test intermediate");
    let intermediate =
        CertifiedIssuer::signed_by(intermediate_params, KeyPair::generate().unwrap(), &root)
            .unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params("relay.test", 9)
        .signed_by(&leaf_key, &intermediate)
        .unwrap();
    let pair = Pair {
        cert_pem: format!("{}{}", leaf.pem(), intermediate.pem()),
        key_pem: leaf_key.serialize_pem(),
        der: leaf.der().to_vec(),
    };
    let files = Files::new(&pair);
    let (relay, _db) = start_tls(&files, |_| {}).await;
    let mut client = wss(relay.local_addr, trusting(&[root.der()])).await;
    assert_eq!(presented(&client).0, pair.der);
    client.assert_healthy().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn nip11_over_https_and_tls_connections_count_against_max_connections() {
    let pair = self_signed("relay one", 1);
    let files = Files::new(&pair);
    let (relay, _db) = start_tls(&files, |config| {
        config.info.name = "tls relay".into();
        config.network.max_connections = 1;
    })
    .await;
    let tls = trusting(&[&pair.der]);
    let (status, body) = https_get(
        relay.local_addr,
        tls.clone(),
        "Accept: application/nostr+json\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["name"], "tls relay");

    // The one slot is taken by a wss client: an https request is 503.
    let mut client = wss(relay.local_addr, tls.clone()).await;
    client.assert_healthy().await;
    let (status, _) = https_get(relay.local_addr, tls.clone(), "").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    client.assert_healthy().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn auth_names_the_wss_url_when_relay_url_is_unset() {
    let pair = self_signed("relay one", 1);
    let files = Files::new(&pair);
    let (relay, _db) = start_tls(&files, |config| {
        assert!(config.relay_url.is_empty());
        assert!(config.auth.enabled);
    })
    .await;
    let tls = trusting(&[&pair.der]);
    let port = relay.local_addr.port();

    let mut client = wss(relay.local_addr, tls.clone()).await;
    let (accepted, reason) = client
        .authenticate(&Keys::generate(), &format!("wss://localhost:{port}"))
        .await;
    assert!(accepted, "{reason}");

    // The URL is checked: another port is another relay.
    let mut client = wss(relay.local_addr, tls).await;
    let (accepted, reason) = client
        .authenticate(&Keys::generate(), &format!("wss://localhost:{}", port + 1))
        .await;
    assert!(!accepted);
    assert!(
        reason.starts_with("auth-required:") || reason.starts_with("invalid:"),
        "{reason}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_clients_fail_their_handshake_and_the_relay_goes_on() {
    let pair = self_signed("relay one", 1);
    let files = Files::new(&pair);
    let (relay, _db) = start_tls(&files, |_| {}).await;
    let addr = relay.local_addr;
    let tls = trusting(&[&pair.der]);
    let mut good = wss(addr, tls.clone()).await;
    good.assert_healthy().await;

    // A client that never sends its ClientHello holds its own task only:
    // the accept loop goes on.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut during = wss(addr, tls.clone()).await;
    during.assert_healthy().await;

    // Plaintext WebSocket on the TLS port.
    let plain = tokio::time::timeout(
        ANSWER,
        tokio_tungstenite::connect_async(format!("ws://{addr}/")),
    )
    .await
    .expect("the plaintext client is answered in time");
    assert!(plain.is_err(), "a plaintext ws:// client got through");

    // Garbage: the relay closes the connection.
    for _ in 0..20 {
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(b"\x16\x03\x01\x00\x05hello, this is not a ClientHello at all\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(ANSWER, garbage.read_to_end(&mut rest))
            .await
            .expect("the relay closes a garbage connection in time");
        // Closed cleanly or reset; either way nothing but a TLS alert came back.
        if closed.is_ok() {
            assert!(rest.is_empty() || rest[0] == 0x15, "{rest:?}");
        }
    }

    // A client that does not trust the certificate refuses it.
    let stranger = self_signed("someone else", 2);
    let refused = try_wss(addr, trusting(&[&stranger.der])).await;
    let error = refused
        .err()
        .expect("a distrusting client must fail")
        .to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    good.assert_healthy().await;
    during.assert_healthy().await;
    wss(addr, tls).await.assert_healthy().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_certificate_is_served_to_new_connections() {
    let first = self_signed("first", 1);
    let files = Files::new(&first);
    let (relay, _db) = start_tls(&files, |_| {}).await;
    let addr = relay.local_addr;
    let second = self_signed("second", 2);
    let both = trusting(&[&first.der, &second.der]);
    let mut old = wss(addr, both.clone()).await;
    assert_eq!(presented(&old).0, first.der);

    files.write(&second);
    relay.reload_tls().expect("the new pair loads");
    let mut new = wss(addr, both.clone()).await;
    assert_eq!(presented(&new).0, second.der);
    new.assert_healthy().await;
    old.assert_healthy().await;

    // A bad replacement (a key that is not the certificate's) keeps the
    // pair in force.
    let third = self_signed("third", 3);
    std::fs::write(&files.cert, &third.cert_pem).unwrap();
    let error = relay
        .reload_tls()
        .expect_err("a mismatched pair is refused");
    assert!(error.to_string().contains("privkey.pem"), "{error}");
    let mut after = wss(addr, both.clone()).await;
    assert_eq!(presented(&after).0, second.der);
    after.assert_healthy().await;

    // So does a half-written certificate file.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    let error = relay.reload_tls().expect_err("a truncated file is refused");
    assert!(error.to_string().contains("fullchain.pem"), "{error}");
    assert_eq!(presented(&wss(addr, both).await).0, second.der);
    old.assert_healthy().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_reload_with_new_paths_serves_the_new_files() {
    let first = self_signed("first", 1);
    let files = Files::new(&first);
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    files.configure(&mut config);
    let relay = nostr_relayd::start(config.clone()).await.unwrap();
    let second = self_signed("second", 2);
    let elsewhere = Files::new(&second);
    let both = trusting(&[&first.der, &second.der]);
    let mut old = wss(relay.local_addr, both.clone()).await;

    // relay.toml now names other files (what SIGHUP applies).
    elsewhere.configure(&mut config);
    let report = relay.reload(config.clone()).await.unwrap();
    assert_eq!(report.tls_error, None);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(
        presented(&wss(relay.local_addr, both.clone()).await).0,
        second.der
    );

    // Turning TLS off is not done at run time: still TLS, the files in force.
    config.tls_cert = PathBuf::new();
    config.tls_key = PathBuf::new();
    let report = relay.reload(config).await.unwrap();
    assert!(
        report.needs_restart.contains(&"tls_cert".to_owned()),
        "{report:?}"
    );
    let mut new = wss(relay.local_addr, both).await;
    assert_eq!(presented(&new).0, second.der);
    new.assert_healthy().await;
    old.assert_healthy().await;
    relay.shutdown().await;
}

/// The relay binary's log, collected line by line from its stderr.
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn collect(stderr: std::process::ChildStderr) -> Log {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Log(lines)
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            if let Some(line) = self.lines().into_iter().find(|line| line.contains(text)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {text:?} in:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config_file(dir: &Path, files: &Files) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            files.cert.display().to_string(),
            files.key.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn send_signal(relay: &RelayProcess, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(relay.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_binary_quietly() {
    let first = self_signed("first", 1);
    let files = Files::new(&first);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &files);
    let mut relay = RelayProcess::spawn_logging(
        &config,
        &dir.path().join("relay.sqlite"),
        "info",
        Stdio::piped(),
    )
    .await;
    let log = Log::collect(relay.child.stderr.take().unwrap());
    let started = log.wait_for("serving TLS").await;
    assert!(started.contains("first"), "{started}");
    let addr = relay.addr;
    let second = self_signed("second", 2);
    let both = trusting(&[&first.der, &second.der]);
    let mut old = wss(addr, both.clone()).await;
    assert_eq!(presented(&old).0, first.der);

    // Bad handshakes are not worth a line at info.
    let before = log.lines().len();
    for _ in 0..10 {
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = tokio::time::timeout(ANSWER, garbage.read_to_end(&mut Vec::new())).await;
    }
    assert!(
        try_wss(addr, trusting(&[&self_signed("x", 3).der]))
            .await
            .is_err()
    );

    files.write(&second);
    send_signal(&relay, "HUP");
    let reloaded = log.wait_for("tls certificate reloaded").await;
    assert!(reloaded.contains("second"), "{reloaded}");
    let quiet: Vec<String> = log.lines()[before..]
        .iter()
        .filter(|line| !line.contains("reload"))
        .cloned()
        .collect();
    assert!(quiet.is_empty(), "unexpected log lines: {quiet:#?}");

    let mut new = wss(addr, both.clone()).await;
    assert_eq!(presented(&new).0, second.der);
    new.assert_healthy().await;
    old.assert_healthy().await;

    // A bad replacement: logged as an error, the old pair stays.
    std::fs::write(&files.key, self_signed("third", 4).key_pem).unwrap();
    send_signal(&relay, "HUP");
    let failed = log.wait_for("tls certificate reload failed").await;
    assert!(failed.contains("privkey.pem"), "{failed}");
    assert_eq!(presented(&wss(addr, both).await).0, second.der);
    old.assert_healthy().await;
    relay.kill();
}

#[tokio::test]
async fn a_bad_pair_at_start_is_an_error_naming_the_file() {
    let first = self_signed("first", 1);
    let files = Files::new(&first);
    std::fs::write(&files.key, self_signed("other", 2).key_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &files);
    let db = dir.path().join("relay.sqlite");
    let output = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(&config)
        .env("NOSTR_RELAYD_LISTEN", "127.0.0.1:0")
        .env("NOSTR_RELAYD_DB", &db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(
        stderr.contains(&files.key.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Refused before the database was created.
    assert!(!db.exists());

    // In process: a missing certificate file, named.
    let mut config = test_config(dir.path());
    config.tls_cert = files.dir.path().join("missing.pem");
    config.tls_key = files.key.clone();
    let error = nostr_relayd::start(config).await.err().expect("refused");
    let text = error.to_string();
    assert!(text.starts_with("tls_cert: cannot read"), "{text}");
    assert!(text.contains("missing.pem"), "{text}");
}
