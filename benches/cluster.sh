#!/usr/bin/env bash
# The issue-8 measurement: one node on SQLite against one node on PostgreSQL
# (ingest, query), live delivery latency on one node against across nodes of
# a cluster (publish on A, subscribers on C), and the ingest throughput of
# three nodes against one under the same client load. Starts its own
# throwaway PostgreSQL (default durability: fsync and synchronous_commit on)
# and nats-server on loopback. Build first: cargo build --release --bins
#
#   benches/cluster.sh [RELAY_BINARY]        # results in /tmp/relay-bench-cluster
#
# Needs PostgreSQL's initdb/pg_ctl and nats-server (Debian: postgresql,
# nats-server); as root, PostgreSQL runs as the postgres user.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/nostr-relayd}
B=$ROOT/target/release/relay-bench
OUT=/tmp/relay-bench-cluster; rm -rf "$OUT"; mkdir -p "$OUT"; chmod 777 "$OUT"
NOW=1795737600
PG_PORT=55499; NATS_PORT=54299
PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

as_pg "$PGBIN/initdb" -D "$OUT/pg" -U postgres --auth=trust -E UTF8 > "$OUT/initdb.log"
as_pg "$PGBIN/pg_ctl" -D "$OUT/pg" -l "$OUT/pg.log" -w start \
    -o "-p $PG_PORT -k $OUT -c listen_addresses=127.0.0.1 -c shared_buffers=512MB -c max_connections=200"
nats-server -a 127.0.0.1 -p $NATS_PORT > "$OUT/nats.log" 2>&1 & NATS=$!
trap 'kill $NATS 2>/dev/null; as_pg "$PGBIN/pg_ctl" -D "$OUT/pg" -m fast stop > /dev/null' EXIT
newdb() { psql -q -h 127.0.0.1 -p $PG_PORT -U postgres -c "CREATE DATABASE $1"; echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"; }

# config NAME BACKEND URL NODE NATS: a relay.toml in $OUT.
config() {
    cat > "$OUT/$1.toml" <<EOF
[storage]
backend = "$2"
postgres_url = "$3"
[cluster]
nats_url = "$5"
node_name = "$4"
EOF
}
PIDS=()
# start CONFIG PORT [SQLITE_FILE]
start() {
    NOSTR_RELAYD_LISTEN=127.0.0.1:$2 NOSTR_RELAYD_DB=${3:-$OUT/unused.sqlite} RUST_LOG=warn \
        "$BIN" --config "$OUT/$1.toml" >> "$OUT/relay-$1.log" 2>&1 & PIDS+=($!); sleep 1.5
}
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p"; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; PIDS=(); }
ingest() { "$B" ingest --url "$1" --count "$2" --seed "${3:-1}" --now $NOW 2>/dev/null | tail -1; }
query() { "$B" query --url "$1" --count 100000 --now $NOW --duration 30 2>/dev/null | tail -1; }

echo "== one node: SQLite"
config sqlite sqlite "" "" ""
start sqlite 17101 "$OUT/one.sqlite"
ingest ws://127.0.0.1:17101 100000 | tee "$OUT/sqlite-ingest.txt"
query ws://127.0.0.1:17101 | tee "$OUT/sqlite-query.txt"
stop_all

echo "== one node: PostgreSQL"
config pg postgres "$(newdb one)" "a" ""
start pg 17102
ingest ws://127.0.0.1:17102 100000 | tee "$OUT/pg-ingest.txt"
# Planner statistics: autovacuum analyzes within a minute or so of a load;
# a benchmark right after a bulk load does it by hand (and sets the
# visibility map the index-only scans use).
psql -q -h 127.0.0.1 -p $PG_PORT -U postgres -d one -c "VACUUM ANALYZE"
query ws://127.0.0.1:17102 | tee "$OUT/pg-query.txt"
stop_all

echo "== fan-out latency: one SQLite node, one PostgreSQL node, three nodes (publish on A, subscribers on C)"
start sqlite 17103 "$OUT/fanout.sqlite"
"$B" fanout --url ws://127.0.0.1:17103 --duration 20 2>/dev/null | tail -1 | tee "$OUT/fanout-sqlite.txt"
stop_all
config pgf postgres "$(newdb fanout1)" "a" ""
start pgf 17104
"$B" fanout --url ws://127.0.0.1:17104 --duration 20 2>/dev/null | tail -1 | tee "$OUT/fanout-pg.txt"
stop_all
URL3=$(newdb fanout3)
for n in a b c; do config "node-$n" postgres "$URL3" "$n" "nats://127.0.0.1:$NATS_PORT"; done
start node-a 17111; start node-b 17112; start node-c 17113
"$B" fanout --url ws://127.0.0.1:17113 --publish-url ws://127.0.0.1:17111 --duration 20 2>/dev/null | tail -1 | tee "$OUT/fanout-cluster.txt"
stop_all

echo "== three nodes against one: three load generators (seeds 11, 12, 13) of 30,000 events each"
config t1 postgres "$(newdb tput1)" "a" ""
start t1 17121
LOADS=()
for seed in 11 12 13; do ingest ws://127.0.0.1:17121 30000 $seed > "$OUT/one-node-$seed.txt" & LOADS+=($!); done
wait "${LOADS[@]}"
cat "$OUT"/one-node-*.txt
URLT=$(newdb tput3)
for n in a b c; do config "t3-$n" postgres "$URLT" "$n" "nats://127.0.0.1:$NATS_PORT"; done
start t3-a 17131; start t3-b 17132; start t3-c 17133
LOADS=()
for i in 1 2 3; do ingest ws://127.0.0.1:1713$i 30000 1$i > "$OUT/three-nodes-1$i.txt" & LOADS+=($!); done
wait "${LOADS[@]}"
cat "$OUT"/three-nodes-*.txt
stop_all
for f in "$OUT"/*.txt; do echo "== $(basename "$f")"; cat "$f"; done
