//! What an operator installs and runs the relay with: the command line's
//! operating commands (`--version`, `check-config`, `healthcheck`), the log
//! (its formats, the start-up summary, one line per connection), and the
//! packaging files (Dockerfile, .dockerignore, docker-compose.yml, the
//! systemd unit), checked against each other and against the binary.
//!
//! The container image itself is not built here (no Docker engine):
//! `contrib/check-runtime-stage.sh` runs its runtime stage in a Debian root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use nostr_relayd::Config;
use serde_json::Value;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_nostr-relayd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs the binary to completion with `args` and extra environment.
fn relayd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null());
    for name in ["RUST_LOG", "NOSTR_RELAYD_LISTEN", "NOSTR_RELAYD_DB"] {
        command.env_remove(name);
    }
    command.env_remove(nostr_relayd::logging::ENV_LOG_FORMAT);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run nostr-relayd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, body).unwrap();
    path
}

// ---- --version -------------------------------------------------------------

#[test]
fn version_names_the_commit_it_was_built_from() {
    let output = relayd(&["--version"], &[]);
    assert!(output.status.success());
    let line = text(&output.stdout);
    let line = line.trim();
    let head = format!("nostr-relayd {} (", env!("CARGO_PKG_VERSION"));
    let build = line
        .strip_prefix(&head)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not `{head}<commit> <date>)`"));
    // build.rs reruns when HEAD moves, so the binary is of this checkout.
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(ROOT)
        .output()
        .expect("git, to know this checkout's commit");
    assert!(git.status.success(), "not a git checkout: {git:?}");
    let commit = text(&git.stdout).trim().to_owned();
    let (hash, date) = build
        .split_once(' ')
        .unwrap_or_else(|| panic!("no date in {build:?}"));
    assert_eq!(hash.trim_end_matches("-dirty"), commit, "{line}");
    let date: Vec<&str> = date.split('-').collect();
    assert!(
        date.len() == 3 && date.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "the commit's date as YYYY-MM-DD: {line}"
    );
}

// ---- check-config ----------------------------------------------------------

#[test]
fn check_config_prints_the_configuration_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let body = "relay_url = \"wss://relay.example.com\"\n\
                [limits]\nmax_limit = 200\ndefault_limit = 100\n\
                [auth]\nrequired_for_write = true\n";
    let path = write_config(dir.path(), body);
    let output = relayd(
        &["--config", path.to_str().unwrap(), "check-config"],
        &[("NOSTR_RELAYD_LISTEN", "0.0.0.0:8080")],
    );
    assert!(output.status.success(), "{output:?}");
    let printed = text(&output.stdout);
    let mut expected = Config::from_toml(body).unwrap();
    expected.listen = "0.0.0.0:8080".into();
    assert_eq!(Config::from_toml(&printed).unwrap(), expected, "{printed}");
    // Every key is written out, defaults included: each section of the
    // shipped file appears, and so does each of its keys.
    let shipped: toml::Table = toml::from_str(&repo_file("relay.toml")).unwrap();
    let printed_table: toml::Table = toml::from_str(&printed).unwrap();
    for (key, value) in &shipped {
        let got = printed_table
            .get(key)
            .unwrap_or_else(|| panic!("{key} is missing from:\n{printed}"));
        if let (Some(section), Some(got)) = (value.as_table(), got.as_table()) {
            for inner in section.keys() {
                assert!(got.contains_key(inner), "{key}.{inner} is missing");
            }
        }
    }
}

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for (body, env, key) in [
        (
            "[limits]\ndefault_limit = 5000\n",
            None,
            "limits.default_limit",
        ),
        ("[limits]\nmax_limitt = 5\n", None, "max_limitt"),
        ("", Some("nonsense"), "listen"),
    ] {
        let path = write_config(dir.path(), body);
        let mut env_vars = Vec::new();
        if let Some(listen) = env {
            env_vars.push(("NOSTR_RELAYD_LISTEN", listen));
        }
        let output = relayd(
            &["--config", path.to_str().unwrap(), "check-config"],
            &env_vars,
        );
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        assert!(output.stdout.is_empty(), "nothing on stdout: {output:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(key), "{key} named in {stderr:?}");
    }
    // A missing file is an error too, not the defaults.
    let output = relayd(
        &["--config", "/nonexistent/relay.toml", "check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn the_log_format_is_chosen_by_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[limits]\ndefault_limit = 5000\n");
    let path = path.to_str().unwrap();
    let env_json = relayd(
        &["--config", path, "check-config"],
        &[(nostr_relayd::logging::ENV_LOG_FORMAT, "json")],
    );
    let flag_after = relayd(
        &["--config", path, "check-config", "--log-format", "json"],
        &[],
    );
    let flag_before = relayd(
        &["--log-format", "json", "--config", path, "check-config"],
        &[],
    );
    for output in [env_json, flag_after, flag_before] {
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = text(&output.stderr);
        let line: Value = serde_json::from_str(stderr.trim())
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stderr:?}"));
        assert_eq!(line["level"], "ERROR");
        assert!(
            line["error"]
                .as_str()
                .unwrap()
                .contains("limits.default_limit")
        );
    }
    let text_output = relayd(&["--config", path, "check-config"], &[]);
    let stderr = text(&text_output.stderr);
    assert!(serde_json::from_str::<Value>(stderr.trim()).is_err());
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour into a pipe: {stderr:?}"
    );
    let refused = relayd(&["--log-format", "xml", "check-config"], &[]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "clap refuses it: {refused:?}"
    );
}

// ---- healthcheck -----------------------------------------------------------

/// Runs `healthcheck` against a relay at `addr` (through the same
/// environment override the container uses), returning its exit code.
fn healthcheck(config: &Path, addr: SocketAddr, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["--config", config.to_str().unwrap(), "healthcheck"];
    args.extend_from_slice(extra);
    let output = relayd(&args, &[("NOSTR_RELAYD_LISTEN", &addr.to_string())]);
    (output.status.code(), text(&output.stderr))
}

#[tokio::test]
async fn healthcheck_exits_0_only_while_the_relay_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut relay = RelayProcess::spawn(&config, &dir.path().join("relay.sqlite")).await;
    let addr = relay.addr;
    let (code, stderr) = healthcheck(&config, addr, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let wrong_path = format!("http://{addr}/nope");
    let (code, stderr) = healthcheck(&config, addr, &["--url", &wrong_path]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("404"), "{stderr}");
    relay.kill();
    let (code, stderr) = healthcheck(&config, addr, &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unhealthy"), "{stderr}");
    // Docker reserves 2: an invalid configuration is plain "unhealthy".
    let bad = write_config(dir.path(), "[limits]\ndefault_limit = 5000\n");
    let (code, _) = healthcheck(&bad, addr, &[]);
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn healthcheck_speaks_https_to_a_relay_that_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["relay.example.com".to_owned()])
        .expect("a self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let config = write_config(
        dir.path(),
        &format!("tls_cert = {cert:?}\ntls_key = {key:?}\n"),
    );
    let relay = RelayProcess::spawn(&config, &dir.path().join("relay.sqlite")).await;
    // The default URL is https (the certificate names another host and is
    // self-signed: a liveness probe does not verify it).
    let (code, stderr) = healthcheck(&config, relay.addr, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    // Plain HTTP to a TLS port fails.
    let plain = format!("http://{}/health", relay.addr);
    let (code, _) = healthcheck(&config, relay.addr, &["--url", &plain]);
    assert_eq!(code, Some(1));
}

// ---- the log ---------------------------------------------------------------

/// The real binary with its stderr in a file.
struct LoggingRelay {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggingRelay {
    async fn start(args: &[&str], rust_log: Option<&str>) -> LoggingRelay {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "");
        let log = dir.path().join("relay.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("NOSTR_RELAYD_LISTEN", addr.to_string())
            .env("NOSTR_RELAYD_DB", dir.path().join("relay.sqlite"))
            .env_remove(nostr_relayd::logging::ENV_LOG_FORMAT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let child = command.spawn().expect("spawn nostr-relayd");
        let deadline = tokio::time::Instant::now() + ANSWER;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        LoggingRelay {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a line that `wanted` accepts.
    async fn wait_for(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + ANSWER;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| wanted(l)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such line in:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One publishing connection, closed by the client with a close frame.
    async fn one_connection(&self) {
        let mut client = Client::connect(&format!("ws://{}/", self.addr)).await;
        let keys = nostr::prelude::Keys::generate();
        assert_eq!(
            client.publish(&note(&keys, "logged")).await,
            (true, String::new())
        );
        client
            .query("q", vec![serde_json::json!({"limit": 1})])
            .await;
        client.ws.close(None).await.unwrap();
        // Until the relay's close frame and the end of the stream.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(ANSWER, client.ws.next()).await {}
    }
}

impl Drop for LoggingRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn json_logs_carry_the_start_summary_and_one_line_per_connection() {
    // The flag after the subcommand: clap's global option.
    let relay = LoggingRelay::start(&["serve", "--log-format", "json"], None).await;
    relay.one_connection().await;
    let closed = relay.wait_for(|l| l.contains("connection closed")).await;
    let lines = relay.lines();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = parsed
        .iter()
        .find(|l| l["message"] == "relay listening")
        .expect("the start-up line");
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["listen"], relay.addr.to_string());
    assert_eq!(started["version"], nostr_relayd::VERSION);
    assert_eq!(started["auth"], true);
    assert_eq!(started["auth_required_for_write"], false);
    assert_eq!(started["max_connections"], 10_000);
    assert!(
        started["database"]
            .as_str()
            .unwrap()
            .ends_with("relay.sqlite")
    );
    let closed: Value = serde_json::from_str(&closed).unwrap();
    assert_eq!(closed["target"], "nostr_relayd::connection");
    assert_eq!(closed["level"], "INFO");
    assert_eq!(closed["ip"], "127.0.0.1");
    assert_eq!(closed["events"], 1);
    assert_eq!(closed["accepted"], 1);
    assert_eq!(closed["reqs"], 1);
    assert_eq!(closed["close"], "client closed");
    assert!(closed["duration_ms"].is_u64());
    assert!(closed["bytes_in"].as_u64().unwrap() > 100);
    assert!(closed["bytes_out"].as_u64().unwrap() > 100);
    // After the start-up line, nothing else at info: not the EVENT, not the REQ.
    let after_start: Vec<&Value> = parsed
        .iter()
        .skip_while(|l| l["message"] != "relay listening")
        .skip(1)
        .filter(|l| l["level"] == "INFO")
        .collect();
    assert_eq!(after_start, [&closed], "{lines:#?}");
}

#[tokio::test]
async fn the_connection_lines_can_be_silenced_alone() {
    let relay = LoggingRelay::start(&[], Some("info,nostr_relayd::connection=warn")).await;
    relay.one_connection().await;
    // The start-up line still comes, and the closing is done by then: the
    // client waited for the relay's close frame.
    relay.wait_for(|l| l.contains("relay listening")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = relay.lines();
    assert!(
        !lines.iter().any(|l| l.contains("connection closed")),
        "{lines:#?}"
    );
    // And by default they are there, in text.
    let relay = LoggingRelay::start(&[], None).await;
    relay.one_connection().await;
    let closed = relay.wait_for(|l| l.contains("connection closed")).await;
    for field in [
        " INFO nostr_relayd::connection: connection closed ip=127.0.0.1 duration_ms=",
        " events=1 accepted=1 reqs=1 ",
        " close=\"client closed\"",
    ] {
        assert!(closed.contains(field), "{field:?} in {closed}");
    }
}

// ---- Dockerfile ------------------------------------------------------------

/// One Dockerfile instruction: its keyword (upper case) and arguments, with
/// continuation lines joined and comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    let mut pending = String::new();
    for line in repo_file("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let joined = std::mem::take(&mut pending);
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        match stages.last_mut() {
            Some(stage) => stage.push(instruction),
            None => assert_eq!(instruction.keyword, "ARG", "{joined} before the first FROM"),
        }
    }
    stages
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.keyword == keyword)
        .map(|i| i.args.as_str())
        .collect()
}

fn one<'a>(stage: &'a [Instruction], keyword: &str) -> &'a str {
    let found = args_of(stage, keyword);
    assert_eq!(
        found.len(),
        1,
        "exactly one {keyword} in the stage: {found:?}"
    );
    found[0]
}

/// An exec-form (JSON array) instruction's words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

/// The number after `flag` in a shell command (`--uid 10001`).
fn number_after(command: &str, flag: &str) -> u32 {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == flag)
        .unwrap_or_else(|| panic!("{flag} in {command}"));
    words[at + 1].parse().unwrap()
}

fn port_of(listen: &str) -> u16 {
    listen.parse::<SocketAddr>().unwrap().port()
}

/// The image's ENV, the config path, the binary's path: what the runtime
/// stage promises, checked where it is used.
struct Image {
    env: BTreeMap<String, String>,
    config: String,
    binary: String,
    uid: u32,
    port: u16,
    healthcheck: Vec<String>,
}

fn image() -> Image {
    let stages = dockerfile();
    let runtime = stages.last().unwrap();
    let mut env = BTreeMap::new();
    for line in args_of(runtime, "ENV") {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("ENV name=value");
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    let entrypoint = exec_form(one(runtime, "ENTRYPOINT"));
    let binary = runtime
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.starts_with("--from="))
        .find_map(|i| i.args.split_whitespace().last())
        .expect("the binary copied from the builder")
        .to_owned();
    let uid: Vec<&str> = one(runtime, "USER").split(':').collect();
    let healthcheck = one(runtime, "HEALTHCHECK");
    let (_, command) = healthcheck
        .split_once(" CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    Image {
        env,
        config: entrypoint[2].clone(),
        binary,
        uid: uid[0].parse().expect("a numeric USER"),
        port: one(runtime, "EXPOSE").parse().expect("one EXPOSE port"),
        healthcheck: exec_form(command),
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_in_another() {
    let stages = dockerfile();
    assert!(stages.len() >= 2, "multi-stage");
    let names: Vec<String> = stages
        .iter()
        .filter_map(|s| s[0].args.split_once(" AS ").map(|(_, n)| n.to_owned()))
        .collect();
    assert!(names.contains(&"builder".to_owned()), "FROM ... AS builder");
    let builder = &stages[0];
    let runtime = stages.last().unwrap();
    assert!(
        runtime[0].args.starts_with("debian:bookworm-slim"),
        "{:?}",
        runtime[0]
    );
    // The build: locked, the commit passed in (no .git in the context).
    let builds: Vec<&str> = args_of(builder, "RUN")
        .into_iter()
        .filter(|r| r.contains("cargo build --release --locked"))
        .collect();
    assert_eq!(builds.len(), 2, "dependencies, then the crate");
    assert!(args_of(builder, "ARG").contains(&"NOSTR_RELAYD_COMMIT=unknown"));
    assert!(builds[1].contains("NOSTR_RELAYD_COMMIT="), "{}", builds[1]);
    assert!(builds[1].contains("--version") && builds[1].contains("check-config"));
    // No secret is baked in: no ARG or ENV that looks like one.
    for stage in &stages {
        for i in stage
            .iter()
            .filter(|i| i.keyword == "ARG" || i.keyword == "ENV")
        {
            let upper = i.args.to_ascii_uppercase();
            for word in ["SECRET", "TOKEN", "PASSWORD", "PRIVATE", "_KEY"] {
                assert!(!upper.contains(word), "{i:?}");
            }
        }
    }
    // Each COPY --from names an earlier stage.
    for i in runtime.iter().filter(|i| i.keyword == "COPY") {
        if let Some(from) = i.args.strip_prefix("--from=") {
            let stage = from.split_whitespace().next().unwrap();
            assert!(names.iter().any(|n| n == stage), "{i:?}");
        }
    }
}

#[test]
fn the_builder_copies_everything_the_crate_compiles_from() {
    let stages = dockerfile();
    let copied: BTreeSet<String> = args_of(&stages[0], "COPY")
        .into_iter()
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for source in &copied {
        assert!(
            Path::new(ROOT).join(source).exists(),
            "COPY {source}: missing"
        );
    }
    let mut needed: BTreeSet<String> =
        ["Cargo.toml", "Cargo.lock", "build.rs", "src", "relay.toml"]
            .map(str::to_owned)
            .into();
    // Files pulled into the binary with include_str!/include_bytes!.
    for file in rust_files(&Path::new(ROOT).join("src")) {
        let source = std::fs::read_to_string(&file).unwrap();
        for quoted in source.split("include_").skip(1).filter_map(|rest| {
            let rest = rest
                .strip_prefix("str!(\"")
                .or(rest.strip_prefix("bytes!(\""))?;
            rest.split('"').next()
        }) {
            let target = file.parent().unwrap().join(quoted);
            let target = normalize(&target);
            let relative = target.strip_prefix(ROOT).unwrap_or_else(|_| {
                panic!(
                    "{} includes {quoted} from outside the crate",
                    file.display()
                )
            });
            let top = relative.components().next().unwrap();
            needed.insert(top.as_os_str().to_string_lossy().into_owned());
        }
    }
    // Targets Cargo.toml declares must exist even when not built.
    let manifest: toml::Table = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    for (kind, dir) in [
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
    ] {
        if let Some(targets) = manifest.get(kind).and_then(|t| t.as_array()) {
            for target in targets {
                let path = target
                    .get("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or(dir)
                    .split('/')
                    .next()
                    .unwrap();
                needed.insert(path.to_owned());
            }
        }
    }
    for path in &needed {
        assert!(
            copied.contains(path),
            "the builder must COPY {path} (has {copied:?})"
        );
    }
    // And .dockerignore must not keep any of it out of the context.
    let ignored = dockerignore();
    for path in &needed {
        assert!(!ignored.contains(path), ".dockerignore excludes {path}");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn dockerignore() -> BTreeSet<String> {
    repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect()
}

#[test]
fn dockerignore_keeps_build_output_and_local_data_out() {
    let ignored = dockerignore();
    for entry in [
        ".git",
        "target",
        "**/target",
        "node_modules",
        "**/node_modules",
        "fuzz",
        "data",
        "*.sqlite",
    ] {
        assert!(ignored.contains(entry), ".dockerignore lacks {entry}");
    }
}

#[test]
fn the_runtime_stage_runs_unprivileged_with_its_data_in_a_volume() {
    let stages = dockerfile();
    let runtime = stages.last().unwrap();
    let image = image();
    assert_ne!(image.uid, 0, "not root");
    assert_eq!(
        one(runtime, "USER"),
        format!("{0}:{0}", image.uid),
        "numeric uid:gid"
    );
    let run = one(runtime, "RUN");
    assert_eq!(number_after(run, "--uid"), image.uid, "{run}");
    assert_eq!(number_after(run, "--gid"), image.uid, "{run}");
    assert!(run.contains("groupadd") && run.contains("useradd"), "{run}");
    assert!(
        run.contains(&format!("chown {0}:{0} /data", image.uid)),
        "{run}"
    );
    assert_eq!(one(runtime, "VOLUME"), "/data");
    assert_eq!(one(runtime, "WORKDIR"), "/data");
    // The database is in the volume.
    let db = &image.env[nostr_relayd::config::ENV_DB];
    assert!(db.starts_with("/data/"), "{db}");
    // Every variable set is one the binary reads.
    let known = [
        nostr_relayd::config::ENV_LISTEN,
        nostr_relayd::config::ENV_DB,
        nostr_relayd::logging::ENV_LOG_FORMAT,
        "RUST_LOG",
    ];
    for name in image.env.keys() {
        assert!(
            known.contains(&name.as_str()),
            "ENV {name}: unknown to the binary"
        );
    }
    // The port: EXPOSE = the listen override's = the shipped relay.toml's.
    let shipped: Config = Config::from_toml(&repo_file("relay.toml")).unwrap();
    assert_eq!(
        image.port,
        port_of(&image.env[nostr_relayd::config::ENV_LISTEN])
    );
    assert_eq!(image.port, port_of(&shipped.listen));
    assert!(image.env[nostr_relayd::config::ENV_LISTEN].starts_with("0.0.0.0:"));
    assert_eq!(one(runtime, "STOPSIGNAL"), "SIGTERM");
}

#[test]
fn the_image_starts_the_relay_with_its_config_and_checks_its_health() {
    let stages = dockerfile();
    let runtime = stages.last().unwrap();
    let image = image();
    let entrypoint = exec_form(one(runtime, "ENTRYPOINT"));
    assert_eq!(entrypoint, ["nostr-relayd", "--config", &image.config]);
    assert_eq!(image.config, "/etc/nostr-relayd/relay.toml");
    assert_eq!(exec_form(one(runtime, "CMD")), ["serve"]);
    assert!(
        args_of(runtime, "COPY").contains(&format!("relay.toml {}", image.config).as_str()),
        "the shipped relay.toml is the image's config"
    );
    assert_eq!(
        image.binary, "/usr/local/bin/nostr-relayd",
        "on the default PATH"
    );
    assert_eq!(
        image.healthcheck,
        ["nostr-relayd", "--config", &image.config, "healthcheck"]
    );
    let healthcheck = one(runtime, "HEALTHCHECK");
    for option in ["--interval=", "--timeout=", "--start-period=", "--retries="] {
        assert!(healthcheck.contains(option), "{healthcheck}");
    }
    // The words the image runs are commands this binary has.
    for words in [&["serve"][..], &["healthcheck"], &["check-config"]] {
        let mut args = vec!["--config", "relay.toml"];
        args.extend_from_slice(words);
        args.push("--help");
        let output = relayd(&args, &[]);
        assert!(output.status.success(), "{words:?}: {output:?}");
    }
}

// ---- docker-compose.yml ----------------------------------------------------

/// A YAML document as `path = value` pairs (`services.relay.restart`,
/// `services.relay.volumes[]`): enough to check a compose file's shape
/// without a YAML crate. Flow sequences (`[...]`) stay one value.
fn yaml_outline(text: &str) -> Vec<(String, String)> {
    let mut outline = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        assert!(
            !line.contains('\t'),
            "line {}: a tab (YAML forbids them)",
            number + 1
        );
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        assert_eq!(indent % 2, 0, "line {}: odd indentation", number + 1);
        while stack.last().is_some_and(|(depth, _)| *depth >= indent) {
            stack.pop();
        }
        let parent: Vec<&str> = stack.iter().map(|(_, key)| key.as_str()).collect();
        let parent = parent.join(".");
        if let Some(item) = content.strip_prefix("- ") {
            outline.push((format!("{parent}[]"), unquote(item)));
            continue;
        }
        let (key, value) = content
            .split_once(':')
            .unwrap_or_else(|| panic!("line {}: not `key: value`: {line}", number + 1));
        let path = if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
        let value = value.trim();
        // `key: &anchor` opens a mapping too.
        if value.is_empty() || value.starts_with('&') {
            stack.push((indent, key.to_owned()));
        }
        outline.push((path, unquote(value)));
    }
    outline
}

/// The values an outline holds at `path`, in document order.
fn values_at<'a>(outline: &'a [(String, String)], path: &str) -> Vec<&'a str> {
    outline
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn unquote(value: &str) -> String {
    value.trim().trim_matches('"').to_owned()
}

#[test]
fn docker_compose_runs_the_image_with_a_volume_and_a_healthcheck() {
    let outline = yaml_outline(&repo_file("docker-compose.yml"));
    let get = |path: &str| values_at(&outline, path);
    let image = image();
    assert_eq!(get("services.relay.build.context"), ["."]);
    assert_eq!(get("services.relay.restart"), ["unless-stopped"]);
    let volumes = get("services.relay.volumes[]");
    let data = volumes
        .iter()
        .find(|v| v.ends_with(":/data"))
        .expect("a volume on /data");
    let name = data.trim_end_matches(":/data");
    assert_eq!(
        get(&format!("volumes.{name}")),
        [""],
        "{name} is a named volume"
    );
    let config = volumes
        .iter()
        .find(|v| v.contains(&format!(":{}", image.config)))
        .expect("the config mounted");
    assert!(config.ends_with(":ro"), "read-only: {config}");
    let ports = get("services.relay.ports[]");
    assert_eq!(ports.len(), 1);
    assert!(ports[0].ends_with(&format!(":{}", image.port)), "{ports:?}");
    let test: Vec<String> =
        serde_json::from_str(get("services.relay.healthcheck.test")[0]).unwrap();
    assert_eq!(test[0], "CMD");
    assert_eq!(test[1..], image.healthcheck[..], "the image's own check");
    let nofile = get("services.relay.ulimits.nofile.soft");
    assert!(nofile[0].parse::<u64>().unwrap() >= 65_536, "{nofile:?}");
    assert_eq!(get("services.relay.stop_signal"), ["SIGTERM"]);
    assert!(!get("services.relay.stop_grace_period").is_empty());
    assert_eq!(get("services.relay.read_only"), ["true"]);
    let known = [nostr_relayd::logging::ENV_LOG_FORMAT, "RUST_LOG"];
    for (path, _) in outline
        .iter()
        .filter(|(p, _)| p.starts_with("services.relay.environment."))
    {
        let name = path.rsplit('.').next().unwrap();
        assert!(known.contains(&name), "{name}: unknown to the binary");
    }
}

#[test]
fn the_cluster_compose_file_runs_three_nodes_on_postgres_and_nats_behind_nginx() {
    let outline = yaml_outline(&repo_file("docker-compose.cluster.yml"));
    let get = |path: &str| values_at(&outline, path);
    let image = image();
    // Every node merges the one relay definition and is named by its host name.
    for node in ["relay-a", "relay-b", "relay-c"] {
        assert_eq!(get(&format!("services.{node}.<<")), ["*relay"], "{node}");
        assert_eq!(get(&format!("services.{node}.hostname")), [node]);
    }
    assert_eq!(get("x-relay"), ["&relay"]);
    let volumes = get("x-relay.volumes[]");
    assert_eq!(
        volumes,
        [format!("./contrib/cluster/relay.toml:{}:ro", image.config)],
        "the cluster config, read-only, where the image reads it"
    );
    let url = get("x-relay.environment.NOSTR_RELAYD_POSTGRES_URL");
    assert_eq!(url.len(), 1);
    assert!(url[0].contains("@postgres:5432/"), "{url:?}");
    let test: Vec<String> = serde_json::from_str(get("x-relay.healthcheck.test")[0]).unwrap();
    assert_eq!(test[1..], image.healthcheck[..], "the image's own check");
    assert!(get("services.postgres.image")[0].starts_with("postgres:"));
    assert!(get("services.nats.image")[0].starts_with("nats:"));
    assert_eq!(
        get("services.nginx.volumes[]"),
        ["./contrib/cluster/nginx.conf:/etc/nginx/nginx.conf:ro"]
    );

    // The nodes' config: PostgreSQL, the compose file's NATS, nginx trusted.
    let mut config =
        nostr_relayd::Config::from_toml(&repo_file("contrib/cluster/relay.toml")).unwrap();
    config.apply_env(|name| {
        (name == nostr_relayd::config::ENV_POSTGRES_URL).then(|| url[0].to_owned())
    });
    config.validate().unwrap();
    assert_eq!(
        config.storage.backend,
        nostr_relayd::config::Backend::Postgres
    );
    assert_eq!(config.cluster.nats_url, "nats://nats:4222");
    assert_eq!(
        config.cluster.node_name, "",
        "each node takes its host name"
    );
    let subnet = get("networks.cluster.ipam.config[]");
    assert_eq!(subnet, ["subnet: 172.28.0.0/16"]);
    assert_eq!(config.network.trusted_proxies, ["172.28.0.0/16"]);

    // nginx balances over the three nodes, on the port they listen on, and
    // passes WebSocket upgrades.
    let nginx = repo_file("contrib/cluster/nginx.conf");
    let port = port_of(&config.listen);
    for node in ["relay-a", "relay-b", "relay-c"] {
        assert!(nginx.contains(&format!("server {node}:{port} ")), "{node}");
    }
    assert!(nginx.contains("proxy_set_header Upgrade $http_upgrade;"));
    assert!(nginx.contains("proxy_set_header X-Forwarded-For"));
    // No sticky sessions: any node serves any client.
    let directives: Vec<&str> = nginx
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    assert!(
        directives.iter().all(|line| !line.starts_with("ip_hash")
            && !line.starts_with("sticky")
            && !line.starts_with("hash ")),
        "{directives:?}"
    );
    assert!(directives.contains(&"least_conn;"));
}

// ---- systemd ---------------------------------------------------------------

/// The unit's `Key=value` lines per section; a key may repeat.
fn unit() -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in repo_file("contrib/nostr-relayd.service").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=value");
        keys.entry(format!("{section}.{key}"))
            .or_default()
            .push(value.to_owned());
    }
    keys
}

#[test]
fn the_systemd_unit_is_locked_down() {
    let unit = unit();
    let single = |key: &str| -> &str {
        let values = unit
            .get(&format!("Service.{key}"))
            .unwrap_or_else(|| panic!("{key} is not set"));
        assert_eq!(values.len(), 1, "{key} set once");
        &values[0]
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "nostr-relayd"),
        ("ConfigurationDirectory", "nostr-relayd"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("ReadWritePaths", "/var/lib/nostr-relayd"),
        ("WorkingDirectory", "/var/lib/nostr-relayd"),
    ] {
        assert_eq!(single(key), value, "{key}");
    }
    assert!(single("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    assert!(
        unit["Service.SystemCallFilter"].contains(&"@system-service".to_owned()),
        "SystemCallFilter=@system-service"
    );
    // The stop timeout outlasts the relay's own drain.
    let drain = Config::default().network.shutdown_timeout_seconds;
    assert!(single("TimeoutStopSec").parse::<u64>().unwrap() > drain);
    // ExecStart: the image's binary path, the config in the config directory.
    let image = image();
    let exec: Vec<&str> = single("ExecStart").split_whitespace().collect();
    assert_eq!(
        exec,
        [image.binary.as_str(), "--config", &image.config, "serve"]
    );
    assert!(image.config.starts_with("/etc/nostr-relayd/"));
    // The database in the state directory, through a variable the binary reads.
    let env: BTreeMap<&str, &str> = unit["Service.Environment"]
        .iter()
        .map(|e| e.split_once('=').unwrap())
        .collect();
    let known = [
        nostr_relayd::config::ENV_DB,
        nostr_relayd::logging::ENV_LOG_FORMAT,
    ];
    for name in env.keys() {
        assert!(
            known.contains(name),
            "Environment {name}: unknown to the binary"
        );
    }
    assert!(env[nostr_relayd::config::ENV_DB].starts_with("/var/lib/nostr-relayd/"));
    assert_eq!(unit["Install.WantedBy"], ["multi-user.target"]);
}

/// `systemd-analyze verify` reads the unit as systemd would; it warns about
/// unknown keys and bad values on stderr without failing, so any output
/// fails the test. ExecStart must name an existing file: this build's.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit =
        repo_file("contrib/nostr-relayd.service").replace("/usr/local/bin/nostr-relayd", BIN);
    let path = dir.path().join("nostr-relayd.service");
    std::fs::write(&path, unit).unwrap();
    common::provision::debian_package("systemd-analyze", "systemd");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text(&output.stderr), "", "systemd-analyze warned");
}
