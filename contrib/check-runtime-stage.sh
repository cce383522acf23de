#!/usr/bin/env bash
# Runs the Dockerfile's runtime stage without Docker, and the relay in it.
#
# This machine has no Docker engine (and cannot pull images), so the image
# itself is never built here. What can be checked is the runtime stage: a
# Debian bookworm root made by debootstrap (the same release and package set
# as debian:bookworm-slim, give or take documentation), the stage's own
# instructions read from the Dockerfile and carried out in it (RUN in a
# chroot, COPY with this build's binary in place of the builder stage's),
# then the relay started as the image starts it: the USER's uid:gid, the ENV,
# the WORKDIR, the ENTRYPOINT and CMD, in a network namespace of its own as
# in a container. From outside it is then checked that:
#   - the port answers NIP-11 and /health answers 200;
#   - EVENTs are stored, and after a stop by STOPSIGNAL (a clean exit) and a
#     restart they are still there (in the /data volume);
#   - the HEALTHCHECK command, run in the root as the user, exits 0;
#   - the relay runs as the USER's uid and gid, wrote nothing outside /data,
#     and that user cannot write the binary, the config or any directory but
#     /data and Debian's world-writable scratch directories.
#
# Usage (as root: chroot, network namespaces):
#   contrib/check-runtime-stage.sh [--profile release|debug]
# The release profile (default) is what the image ships; CI passes
# `--profile debug` to reuse the binaries `cargo test` built: nothing checked
# here depends on the optimization level. The bookworm root is cached under
# target/runtime-stage/, so a second run skips debootstrap.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
profile=release
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        *) echo "usage: $0 [--profile release|debug]" >&2; exit 64 ;;
    esac
done

started=$SECONDS
say() { printf '[%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (chroot and network namespaces need it)"

# ---- tools -----------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---- binaries --------------------------------------------------------------
if [ "$profile" = release ]; then
    say "cargo build --release --locked --bins"
    cargo build --release --locked --bins
else
    say "cargo build --locked --bins"
    cargo build --locked --bins
fi
binary=$repo/target/$profile/nostr-relayd
bench=$repo/target/$profile/relay-bench
[ -x "$binary" ] && [ -x "$bench" ] || fail "no $binary or $bench"

# ---- the Dockerfile's runtime stage ----------------------------------------
# Instructions of the last stage, continuation lines joined, comments dropped.
stage=()
pending=
while IFS= read -r line || [ -n "$line" ]; do
    trimmed="${line#"${line%%[![:space:]]*}"}"
    case $trimmed in '#'*) continue ;; esac
    if [ -z "$trimmed" ] && [ -z "$pending" ]; then continue; fi
    if [[ $trimmed == *\\ ]]; then
        pending+="${trimmed%\\} "
        continue
    fi
    instruction="$pending$trimmed"
    pending=
    case $instruction in
        FROM\ *) stage=("$instruction") ;;
        *) stage+=("$instruction") ;;
    esac
done < Dockerfile

from=${stage[0]#FROM }
[ "$from" = debian:bookworm-slim ] \
    || fail "the runtime stage is FROM $from; this check reproduces debian:bookworm-slim only"

# ---- the root --------------------------------------------------------------
cache=$repo/target/runtime-stage
base=$cache/bookworm-minbase
if [ ! -e "$base/.complete" ]; then
    say "debootstrap --variant=minbase bookworm (cached in $base)"
    rm -rf "$base"
    mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$base" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
        > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; fail "debootstrap"; }
    touch "$base/.complete"
fi
root=$cache/root
# A run that was killed may have left /proc mounted in the old root.
umount "$root/proc" 2>/dev/null || true
rm -rf --one-file-system "$root"
cp -a "$base" "$root"
rm -f "$root/.complete"
say "root ready: $root"

# Docker's default PATH, and what the stage sets.
docker_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
envs=()
user=
workdir=/
volume=
port=
stopsignal=SIGTERM
healthcheck=()
entrypoint=()
cmd=()
exec_form() { jq -r '.[]' <<< "$1"; }

for instruction in "${stage[@]:1}"; do
    keyword=${instruction%% *}
    args=${instruction#* }
    case $keyword in
        RUN)
            say "RUN $args"
            chroot "$root" /usr/bin/env -i PATH="$docker_path" /bin/sh -c "$args"
            ;;
        COPY)
            read -r -a words <<< "$args"
            if [[ ${words[0]} == --from=* ]]; then
                [ "${words[1]}" = /build/target/release/nostr-relayd ] \
                    || fail "COPY $args: only the builder's binary is known here"
                source=$binary
                destination=${words[2]}
            else
                source=$repo/${words[0]}
                destination=${words[1]}
            fi
            say "COPY $source -> $destination"
            install -D -o 0 -g 0 -m "$(stat -c %a "$source")" "$source" "$root$destination"
            ;;
        ENV)
            for pair in $args; do envs+=("$pair"); done
            ;;
        VOLUME) volume=$args ;;
        WORKDIR) workdir=$args; mkdir -p "$root$workdir" ;;
        EXPOSE) port=$args ;;
        USER) user=$args ;;
        STOPSIGNAL) stopsignal=$args ;;
        HEALTHCHECK) mapfile -t healthcheck < <(exec_form "${args#* CMD }") ;;
        ENTRYPOINT) mapfile -t entrypoint < <(exec_form "$args") ;;
        CMD) mapfile -t cmd < <(exec_form "$args") ;;
        *) fail "$keyword in the runtime stage: not reproduced by this script" ;;
    esac
done
[ -n "$user" ] && [ -n "$port" ] && [ -n "$volume" ] || fail "USER, EXPOSE and VOLUME are expected"
[ ${#entrypoint[@]} -gt 0 ] && [ ${#healthcheck[@]} -gt 0 ] || fail "ENTRYPOINT and HEALTHCHECK are expected"
uid=${user%%:*}
gid=${user#*:}
[ "$uid" != 0 ] && [ "$uid" != root ] || fail "USER $user: the image must not run as root"
say "user $uid:$gid, workdir $workdir, volume $volume, port $port, env ${envs[*]}"

# ---- running it ------------------------------------------------------------
netns=nostr-relayd-check-$$
ip netns add "$netns"
relay_pid=
cleanup() {
    if [ -n "$relay_pid" ]; then kill -KILL "$relay_pid" 2>/dev/null || true; fi
    ip netns del "$netns" 2>/dev/null || true
    umount "$root/proc" 2>/dev/null || true
}
trap cleanup EXIT
# As in a container: /proc is there.
mount -t proc proc "$root/proc"
ip netns exec "$netns" ip link set lo up
in_netns() { ip netns exec "$netns" "$@"; }
# A command as the image runs one: the user, a clean environment, the workdir.
image_env=(/usr/bin/env -i -C "$workdir" PATH="$docker_path" HOME="$workdir" "${envs[@]}")
as_image() {
    in_netns chroot --userspec="$uid:$gid" "$root" "${image_env[@]}" "$@"
}

log=$cache/relay.log
start_relay() {
    say "start: ${entrypoint[*]} ${cmd[*]}"
    # Not through as_image: $! must be the process that becomes the relay
    # (ip, chroot and env each exec the next).
    ip netns exec "$netns" chroot --userspec="$uid:$gid" "$root" "${image_env[@]}" \
        "${entrypoint[@]}" "${cmd[@]}" >> "$log" 2>&1 &
    relay_pid=$!
    for _ in $(seq 1 200); do
        if in_netns curl -s -o /dev/null "http://127.0.0.1:$port/health"; then return; fi
        kill -0 "$relay_pid" 2>/dev/null || { cat "$log"; fail "the relay exited"; }
        sleep 0.05
    done
    cat "$log"
    fail "the relay did not answer on port $port"
}
stop_relay() {
    say "stop: $stopsignal"
    kill -s "${stopsignal#SIG}" "$relay_pid"
    local status=0
    wait "$relay_pid" || status=$?
    relay_pid=
    [ "$status" = 0 ] || { tail -20 "$log"; fail "the relay exited $status after $stopsignal"; }
}

: > "$log"
marker=$cache/started.marker
touch "$marker"
sleep 1 # a file written in this second is newer than the marker
start_relay

# The process: pid 1 of a container would be this one (chroot and env exec).
status=$(grep -E '^(Uid|Gid):' "/proc/$relay_pid/status" | awk '{print $1, $2, $3, $4, $5}')
expected=$(printf 'Uid: %s %s %s %s\nGid: %s %s %s %s' "$uid" "$uid" "$uid" "$uid" "$gid" "$gid" "$gid" "$gid")
[ "$status" = "$expected" ] || fail "the relay runs as: $status"
say "runs as uid $uid, gid $gid"

nip11=$(in_netns curl -sf -H 'Accept: application/nostr+json' "http://127.0.0.1:$port/")
name=$(jq -r .name <<< "$nip11")
grep -qx "name = \"$name\"" relay.toml || fail "NIP-11 name $name is not relay.toml's"
jq -e '.supported_nips | index(1)' <<< "$nip11" > /dev/null || fail "NIP-11: $nip11"
say "NIP-11: $(jq -c '{name, software, version}' <<< "$nip11")"

health=$(in_netns curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")
[ "$health" = 200 ] || fail "/health answered $health"
say "/health: 200"

as_image "${healthcheck[@]}" || fail "HEALTHCHECK ${healthcheck[*]} exited $?"
say "HEALTHCHECK ${healthcheck[*]}: exit 0"

now=$(date +%s)
ingest() {
    in_netns "$bench" --url "ws://127.0.0.1:$port" --now "$now" --seed 7 --authors 5 --json \
        ingest --count 20 --connections 1
}
first=$(ingest)
[ "$(jq .ok <<< "$first")" = 20 ] || fail "EVENTs not stored: $first"
say "20 EVENTs stored (OK true)"

stop_relay
start_relay
again=$(ingest)
[ "$(jq .duplicate <<< "$again")" = 20 ] && [ "$(jq .ok <<< "$again")" = 0 ] \
    || fail "after the restart the events are gone: $again"
say "after a restart the 20 are still there (OK true \"duplicate:\")"
db=$(printf '%s\n' "${envs[@]}" | sed -n 's/^NOSTR_RELAYD_DB=//p')
[ "$(stat -c %u:%g "$root$db")" = "$uid:$gid" ] || fail "$db is not the user's"
say "database $db in the volume, owned by $uid:$gid"

# Writes: the relay's own, then what the user may write at all.
written=$(find "$root" -xdev -newer "$marker" ! -type d ! -path "$root$volume/*" -printf '/%P\n')
[ -z "$written" ] || fail "written outside $volume: $written"
say "the relay wrote nothing outside $volume"
for target in /usr/local/bin/nostr-relayd "${entrypoint[2]}"; do
    if as_image /bin/sh -c ": >> '$target'" 2>/dev/null; then fail "the user can write $target"; fi
done
# find exits 1 for the directories it may not read: that is expected.
writable=$( (as_image find / -xdev -type d -writable 2>/dev/null || true) | sort | tr '\n' ' ')
allowed="$volume /dev/mqueue /dev/shm /run/lock /tmp /var/tmp "
for dir in $writable; do
    case " $allowed" in *" $dir "*) ;; *) fail "the user can write in $dir (writable: $writable)" ;; esac
done
as_image /bin/sh -c ": > $volume/.probe && rm $volume/.probe" || fail "the user cannot write $volume"
say "the user can write only in: $writable"

stop_relay
say "passed in $((SECONDS - started)) s (the image build itself is not run here)"
