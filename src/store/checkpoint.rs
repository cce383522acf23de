//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold, on the writer's thread: it copies the WAL into the database
//! and fsyncs it while every pending EVENT waits (measured: a third of the
//! writer's time at 1,000 events/s). Here a second connection checkpoints
//! in `PASSIVE` mode, which never blocks the writer, at most once per
//! [`INTERVAL`] after commits. The writer keeps a high automatic threshold
//! only as a safety net, should this thread ever fall behind.

use std::time::Duration;

use crossbeam_channel::Receiver;
use rusqlite::Connection;

/// Longest a commit waits to be checkpointed.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// WAL pages after which the writer checkpoints by itself (about 40 MiB).
pub const WRITER_SAFETY_NET_PAGES: i64 = 10_000;

/// Checkpoints after commits until the writer is gone.
pub fn run(conn: Connection, commits: Receiver<()>) {
    while commits.recv().is_ok() {
        // Let more commits land, then copy them all in one pass.
        std::thread::sleep(INTERVAL);
        while commits.try_recv().is_ok() {}
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed");
        }
    }
}
