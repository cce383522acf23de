#!/usr/bin/env bash
# The issue-3 measurement: every relay-bench scenario against one relay
# binary, each on a fresh database, with a fixed corpus (seed 1, --now
# 1795737600). Build first: cargo build --release --bins
#
#   benches/compare.sh LABEL RELAY_BINARY PORT   # results in /tmp/relay-bench-LABEL
#
# To measure an older commit, build it in a git worktree and pass its binary.
set -u
LABEL=$1; BIN=$2; PORT=$3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/relay-bench
URL=ws://127.0.0.1:$PORT
OUT=/tmp/relay-bench-$LABEL; rm -rf "$OUT"; mkdir -p "$OUT"
DB=$OUT/db.sqlite
start() { NOSTR_RELAYD_LISTEN=127.0.0.1:$PORT NOSTR_RELAYD_DB=$1 RUST_LOG=warn "$BIN" --config "$ROOT/relay.toml" >> "$OUT/relay.log" 2>&1 & PID=$!; sleep 1; }
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null; }

start "$DB"
"$B" ingest --url "$URL" --count 100000 --now 1795737600 2>/dev/null | tail -1 > "$OUT/ingest.txt"
"$B" query --url "$URL" --count 100000 --now 1795737600 --duration 30 2>/dev/null | tail -1 > "$OUT/query.txt"
stop
python3 - "$DB" > "$OUT/disk.txt" <<'PY'
import os, sqlite3, sys
db = sys.argv[1]
size = sum(os.path.getsize(db + s) for s in ('', '-wal', '-shm') if os.path.exists(db + s))
j, n = sqlite3.connect(db).execute('select sum(length(json)), count(*) from event').fetchone()
print(f"disk {size} bytes (db+wal+shm) for {n} events, {j} bytes of JSON: {size/j:.2f}x")
PY
start "$DB"
"$B" ingest --url "$URL" --seed 2 --count 50000 --rate 5000 --now 1795737600 2>/dev/null | tail -1 > "$OUT/ingest-5000.txt"
stop
start "$OUT/fanout.sqlite"
"$B" fanout --url "$URL" --duration 20 2>/dev/null | tail -1 > "$OUT/fanout.txt"
stop
start "$OUT/connections.sqlite"
"$B" connections --url "$URL" --connections 5000 --pid "$PID" 2>/dev/null | tail -1 > "$OUT/connections.txt"
stop
for f in "$OUT"/*.txt; do echo "== $(basename "$f")"; cat "$f"; done
