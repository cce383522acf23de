//! Throwaway servers on loopback for the tests that need them: a PostgreSQL
//! cluster (`initdb` + `pg_ctl` in a temporary directory) and a
//! `nats-server`, each on a free port. They are installed from Debian's
//! packages when missing (see provision.rs); one that cannot start panics
//! with its log, so the test fails instead of passing without them.
//!
//! Nothing outlives the test process: each server is stopped when its
//! handle is dropped, and a watchdog shell (a child that polls this process)
//! stops it and removes its files when the process ends without dropping it
//! (the shared PostgreSQL is a static, which is never dropped), or dies.

use std::ffi::OsString;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

// Only the sibling provision.rs: unit tests in src/ may include this file
// and provision.rs with `#[path]` as two sibling modules.
use super::provision;

/// How long a server may take to accept connections.
const START: Duration = Duration::from_secs(60);

/// A PostgreSQL cluster of its own, with trust authentication, listening on
/// 127.0.0.1 only. Tests get a fresh database each from
/// [`Postgres::create_database`].
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Running as root: the server programs run as the `postgres` user
    /// (`initdb` and `pg_ctl` refuse root).
    as_postgres: bool,
    databases: AtomicU64,
    watchdog: Child,
    dir: TempDir,
}

impl Postgres {
    /// One cluster for the whole test binary, started on first use, for
    /// suites that start many relays (each gets its own database in it).
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// Starts a new cluster; panics with initdb's output or the server log
    /// when it cannot.
    pub fn start() -> Postgres {
        Postgres::launch(|bin, as_postgres, dir, data| {
            let initdb = server_command(bin, "initdb", as_postgres, dir)
                .arg("-D")
                .arg(data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"])
                .output()
                .expect("run initdb");
            assert_succeeded("initdb", &initdb);
        })
    }

    /// Starts a streaming replica of this cluster (a hot standby made by
    /// `pg_basebackup -R`): it serves reads of every database of this
    /// one, a moment behind, and refuses writes.
    pub fn start_standby(&self) -> Postgres {
        let primary = self.port.to_string();
        Postgres::launch(|bin, as_postgres, dir, data| {
            let backup = server_command(bin, "pg_basebackup", as_postgres, dir)
                .args(["-h", "127.0.0.1", "-p", &primary, "-U", "postgres"])
                .arg("-D")
                .arg(data)
                .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
                .output()
                .expect("run pg_basebackup");
            assert_succeeded("pg_basebackup", &backup);
        })
    }

    /// Makes a data directory with `init` (in a temporary directory the
    /// server's user owns), then starts a server on it on a free port.
    fn launch(init: impl FnOnce(&Path, bool, &Path, &Path)) -> Postgres {
        let bin = postgres_bin_dir();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("nostr-relayd-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        if as_postgres {
            let (uid, gid) = (user_id("-u"), user_id("-g"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory to the postgres user");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        init(&bin, as_postgres, dir.path(), &data);
        let run = |program: &str| server_command(&bin, program, as_postgres, dir.path());

        let mut port = 0;
        for attempt in 1..=3 {
            port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c full_page_writes=off -c max_connections=500",
                dir.path().display()
            );
            let started = run("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .expect("run pg_ctl");
            if started.status.success() {
                break;
            }
            // Another process may have taken the port in between: retry.
            assert!(
                attempt < 3,
                "PostgreSQL did not start: {}\n{}\nlog:\n{}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }

        let mut stop: Vec<OsString> = Vec::new();
        if as_postgres {
            stop.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
        }
        stop.push(bin.join("pg_ctl").into());
        stop.extend(["-D".into(), data.clone().into()]);
        stop.extend(["stop", "-m", "immediate"].map(OsString::from));
        let watchdog = watchdog(Some(dir.path()), &stop);
        Postgres {
            port,
            bin,
            data,
            as_postgres,
            databases: AtomicU64::new(0),
            watchdog,
            dir,
        }
    }

    /// A new, empty database; returns its `postgres://` URL.
    pub fn create_database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let output = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", &name])
            .output()
            .expect("run createdb");
        assert_succeeded("createdb", &output);
        self.url(&name)
    }

    /// The URL of the database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` with psql against the database at `url` and returns its
    /// unaligned output (rows on lines, columns split by `|`).
    pub fn sql(&self, url: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert_succeeded("psql", &output);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = server_command(&self.bin, "pg_ctl", self.as_postgres, self.dir.path())
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

/// A `nats-server` on 127.0.0.1, which a test can stop and restart on the
/// same port (clients reconnect to `url`) to simulate an outage.
pub struct Nats {
    pub url: String,
    pub port: u16,
    program: PathBuf,
    log: PathBuf,
    server: Option<(Child, Child)>,
    _dir: TempDir,
}

impl Nats {
    /// Starts nats-server, installing it first when missing; panics with
    /// its log when it does not accept connections.
    pub fn start() -> Nats {
        let program = nats_server_program();
        let dir = tempfile::Builder::new()
            .prefix("nostr-relayd-nats-")
            .tempdir()
            .expect("temp dir for nats-server");
        let port = free_port();
        let mut nats = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            program,
            log: dir.path().join("nats-server.log"),
            server: None,
            _dir: dir,
        };
        nats.restart();
        nats
    }

    /// Stops the server (SIGKILL: an outage, not a goodbye).
    pub fn stop(&mut self) {
        if let Some((mut server, mut watchdog)) = self.server.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts the server again on the same port (after [`Nats::stop`]).
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "nats-server is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats-server log file");
        let mut server = Command::new(&self.program)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        let kill: Vec<OsString> = ["kill", "-9", &server.id().to_string()]
            .map(OsString::from)
            .to_vec();
        let watchdog = watchdog(None, &kill);
        let deadline = Instant::now() + START;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = server.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = server.kill();
                panic!(
                    "nats-server did not start on port {} ({exited:?}); log:\n{}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server = Some((server, watchdog));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child shell that waits for this test process to end, then runs
/// `cleanup` and removes `dir`. It ignores the signals a terminal sends the
/// whole process group, so that Ctrl-C still cleans up.
fn watchdog(dir: Option<&Path>, cleanup: &[OsString]) -> Child {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" >/dev/null 2>&1
if [ -n "$dir" ]; then rm -rf "$dir"; fi"#;
    Command::new("sh")
        .args(["-c", SCRIPT, "watchdog", &std::process::id().to_string()])
        .arg(dir.map(Path::as_os_str).unwrap_or_default())
        .args(cleanup)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the watchdog shell")
}

/// `program` from PostgreSQL's bin directory, as the postgres user when
/// `as_postgres`, run in `dir` (the postgres user may not enter ours).
fn server_command(bin: &Path, program: &str, as_postgres: bool, dir: &Path) -> Command {
    let mut command = if as_postgres {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    };
    command.current_dir(dir);
    command
}

/// The directory holding initdb, pg_ctl, createdb and psql: Debian's
/// /usr/lib/postgresql/<newest version>/bin, or where the `initdb` in PATH
/// really lives. Installs Debian's `postgresql` when there is none.
fn postgres_bin_dir() -> PathBuf {
    fn find() -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
        let output = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()?;
        let initdb = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        let bin = initdb.canonicalize().ok()?.parent()?.to_path_buf();
        bin.join("pg_ctl").exists().then_some(bin)
    }
    provision::debian_package_for("PostgreSQL's initdb", "postgresql", || find().is_some());
    find().expect("initdb is installed (checked just above)")
}

/// nats-server from PATH or /usr/sbin (Debian's place, not in a non-root
/// PATH), installing Debian's `nats-server` when it is in neither.
fn nats_server_program() -> PathBuf {
    fn find() -> Option<PathBuf> {
        let output = Command::new("sh")
            .args(["-c", "command -v nats-server"])
            .output()
            .ok()?;
        let in_path = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        [
            PathBuf::from(in_path),
            PathBuf::from("/usr/sbin/nats-server"),
        ]
        .into_iter()
        .find(|p| p.is_absolute() && p.exists())
    }
    provision::debian_package_for("nats-server", "nats-server", || find().is_some());
    find().expect("nats-server is installed (checked just above)")
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `id <flag> postgres`: the postgres user's uid (`-u`) or gid (`-g`).
fn user_id(flag: &str) -> u32 {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    assert_succeeded(
        "id postgres (the user Debian's postgresql creates)",
        &output,
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("id prints a number")
}

fn assert_succeeded(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
