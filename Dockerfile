# nostr-relayd container image.
#
#   docker build -t nostr-relayd .
#   docker run -d --name nostr-relayd -p 7777:7777 -v nostr-relayd-data:/data nostr-relayd
#
# The relay reads /etc/nostr-relayd/relay.toml (mount your own over it) and
# keeps its SQLite database in the /data volume. NOSTR_RELAYD_LISTEN and
# NOSTR_RELAYD_DB override the file's `listen` and `database` keys.

# ---- builder ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Build the dependencies alone first, against placeholder sources, so that
# this layer stays cached until Cargo.toml, Cargo.lock or benches/ changes.
# benches/ is needed here because Cargo.toml declares its [[bench]] targets
# and cargo refuses a manifest whose declared targets are missing; they are
# not compiled by `cargo build`.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src \
        target/release/nostr-relayd \
        target/release/deps/nostr_relayd-* \
        target/release/deps/libnostr_relayd-* \
        target/release/.fingerprint/nostr-relayd-*

# Now the real sources. COPY keeps the files' own timestamps, which can be
# older than the placeholder build, so touch them: cargo must rebuild the crate.
COPY src ./src
COPY relay.toml ./
# The release profile keeps line tables for profiling; the image does not need them.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip --strip-debug target/release/nostr-relayd \
    && test -n "$(./target/release/nostr-relayd --version)"

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 relay \
    && useradd --uid 10001 --gid relay --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /data /etc/nostr-relayd \
    && chown relay:relay /data

COPY --from=builder /build/target/release/nostr-relayd /usr/local/bin/nostr-relayd
COPY relay.toml /etc/nostr-relayd/relay.toml

ENV NOSTR_RELAYD_LISTEN=0.0.0.0:7777 \
    NOSTR_RELAYD_DB=/data/nostr-relayd.sqlite

# Declared after /data is owned by `relay`, so a new named volume inherits
# that ownership.
VOLUME /data
WORKDIR /data
EXPOSE 7777
# The uid is fixed (10001) so that host directories can be chowned to match.
# hadolint ignore=DL3066
USER relay
# The relay stops cleanly on SIGTERM: it closes connections and lets the
# writer finish its last commit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["nostr-relayd", "--config", "/etc/nostr-relayd/relay.toml"]
