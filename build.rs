//! Stamps the binary with the commit it was built from, for `--version`:
//! `nostr-relayd 0.1.0 (3f2a9c1d07be 2026-11-27)`, so that a bug report or
//! a running container says exactly which code it is.
//!
//! Own code, not the `vergen` crate: two `git` commands are all it takes,
//! and vergen would add a dozen build dependencies (gix or git2 among them)
//! to every build of the relay.
//!
//! The value, in `NOSTR_RELAYD_BUILD`, is the first of:
//! - `git`: the abbreviated commit, `-dirty` when tracked files differ from
//!   it, and the commit's date;
//! - the `NOSTR_RELAYD_COMMIT` environment variable, used as it is (the
//!   Dockerfile's build argument: `.git` is not in the image's context);
//! - `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NOSTR_RELAYD_COMMIT");
    let build = from_git()
        .or_else(|| {
            std::env::var("NOSTR_RELAYD_COMMIT")
                .ok()
                .map(|commit| commit.trim().to_owned())
                .filter(|commit| !commit.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NOSTR_RELAYD_BUILD={build}");
}

/// `<commit>[-dirty] <date>`, or None outside a git checkout (or without git).
fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let date = git(&["show", "-s", "--format=%cs", "HEAD"])?;
    watch_git_files();
    // Exit status 1: differences; anything else (an error) is not "dirty".
    let dirty = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .is_ok_and(|status| status.code() == Some(1));
    let dirty = if dirty { "-dirty" } else { "" };
    Some(format!("{commit}{dirty} {date}"))
}

/// Reruns this script when the commit changes: a commit or a checkout moves
/// HEAD or the branch it points to (a loose ref file, or packed-refs).
/// Nothing else is watched, because each rerun rebuilds the whole crate: not
/// the index (`git status` rewrites it), not the sources. So `-dirty` is as
/// of the last commit or checkout; a release built from a clean checkout is
/// always right.
fn watch_git_files() {
    let mut watched = vec![git_path("HEAD"), git_path("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_path(&branch));
    }
    for path in watched.into_iter().flatten() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Where git keeps `name` (worktrees and `GIT_DIR` included), if it exists.
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    path.exists().then_some(path)
}

/// A git command's trimmed output, or None if it failed.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
