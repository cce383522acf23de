//! What a few end-to-end tests drive from outside Rust (Node packages,
//! Debian's Chromium, `systemd-analyze`, PostgreSQL, `nats-server`),
//! installed on first use, so that `cargo test` on a fresh machine runs the
//! whole suite, as README.md promises. Only the package registries are needed: npm's for the exact
//! versions in a package-lock.json, Debian's for the system packages (as
//! root, as CI runs). Whatever cannot be installed fails the test with what
//! to run; nothing is skipped.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One installation at a time within a test binary (cargo runs the binaries
/// themselves one after another).
static INSTALLING: Mutex<()> = Mutex::new(());

/// Runs `npm ci` in `dir` unless each of `packages` is already in its
/// node_modules; panics if Node or npm is missing or the install fails.
pub fn node_packages(dir: &Path, packages: &[&str]) {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let present = |dir: &Path| {
        packages
            .iter()
            .all(|p| dir.join("node_modules").join(p).exists())
    };
    if present(dir) {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()) && present(dir),
        "`npm ci --prefix {}` failed: Node.js 20 or later with npm is needed",
        dir.display()
    );
}

/// Installs the Debian package `package` with apt-get unless `program` (a
/// path, or a name looked up in PATH) is there already; panics when it is
/// still missing afterwards.
pub fn debian_package(program: &str, package: &str) {
    let found = || {
        Command::new("sh")
            .args(["-c", "command -v \"$0\" >/dev/null", program])
            .status()
            .is_ok_and(|s| s.success())
    };
    debian_package_for(program, package, found);
}

/// Installs the Debian package `package` unless `found` says that what it
/// provides (`what`, named in the failure) is there already, for programs
/// outside PATH (PostgreSQL's `initdb` lives in /usr/lib/postgresql/<v>/bin).
pub fn debian_package_for(what: &str, package: &str, found: impl Fn() -> bool) {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if found() {
        return;
    }
    let _ = Command::new("apt-get").arg("update").status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        found(),
        "{what} is missing and `apt-get install {package}` did not provide it \
         (run it as root: apt-get update && apt-get install -y --no-install-recommends {package})"
    );
}
