//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the
//! threshold, on the writer's thread: it copies the WAL into the database
//! and fsyncs it while every pending EVENT waits (measured: a third of the
//! writer's time at 1,000 events/s). Here a second connection checkpoints
//! in `PASSIVE` mode, which never blocks the writer, at most once per
//! [`INTERVAL`] after commits. The writer's own automatic checkpoint stays
//! on at [`WRITER_CHECKPOINT_BYTES`]: by then this thread has copied nearly
//! every frame, so the writer only finishes the copy and restarts the WAL.

use std::time::Duration;

use crossbeam_channel::Receiver;
use rusqlite::Connection;

/// Longest a commit waits to be checkpointed. Short, so that when the
/// writer's own checkpoint comes due, nearly every frame is copied already
/// and it only has to reset the WAL.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// WAL size after which the writer checkpoints by itself, which also lets
/// the WAL start over from its beginning (a passive checkpoint running
/// beside a busy writer never can). Measured at 100,000 events: 8,100
/// events/s with 64 MiB, 6,600 with 16 MiB.
pub const WRITER_CHECKPOINT_BYTES: i64 = 64 << 20;

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
