# nostr-relayd container image.
#
#   docker build -t nostr-relayd \
#     --build-arg NOSTR_RELAYD_COMMIT="$(git rev-parse --short=12 HEAD) $(git show -s --format=%cs HEAD)" .
#   docker run -d --name nostr-relayd -p 7777:7777 -v nostr-relayd-data:/data nostr-relayd
#
# The relay reads /etc/nostr-relayd/relay.toml (mount your own over it) and
# keeps its SQLite database in the /data volume. NOSTR_RELAYD_LISTEN and
# NOSTR_RELAYD_DB override the file's `listen` and `database` keys.
# `docker run --rm nostr-relayd check-config` prints the configuration in force.
#
# tests/packaging.rs checks this file's promises (user, paths, port, health
# check, entry point), and contrib/check-runtime-stage.sh runs the runtime
# stage's RUN line in a Debian bookworm root and the relay in it, as this
# image would.

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

# The commit `--version` reports: build.rs asks git, and .git is not in the
# build context (.dockerignore), so it takes this instead ("unknown" if unset).
ARG NOSTR_RELAYD_COMMIT=unknown

# Now the real sources. COPY keeps the files' own timestamps, which can be
# older than the placeholder build, so touch them: cargo must rebuild the crate.
COPY build.rs relay.toml ./
COPY assets ./assets
COPY src ./src
# The release profile keeps line tables for profiling; the image does not need them.
RUN touch build.rs src/main.rs src/lib.rs \
    && NOSTR_RELAYD_COMMIT="${NOSTR_RELAYD_COMMIT}" \
        cargo build --release --locked --bin nostr-relayd \
    && strip --strip-debug target/release/nostr-relayd \
    && ./target/release/nostr-relayd --version \
    && ./target/release/nostr-relayd --config relay.toml check-config > /dev/null

# ---- runtime ---------------------------------------------------------------
# No packages are added: the binary links only glibc, and `sync` trusts the
# webpki root certificates compiled into it, so ca-certificates is not needed.
FROM debian:bookworm-slim

# The uid and gid are fixed (10001) so that host directories can be chowned
# to match (`install -d -o 10001 -g 10001 /srv/nostr-relayd/data`).
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin relay \
    && mkdir -p /data /etc/nostr-relayd \
    && chown 10001:10001 /data \
    && chmod 0750 /data

COPY --from=builder /build/target/release/nostr-relayd /usr/local/bin/nostr-relayd
COPY relay.toml /etc/nostr-relayd/relay.toml

ENV NOSTR_RELAYD_LISTEN=0.0.0.0:7777
ENV NOSTR_RELAYD_DB=/data/nostr-relayd.sqlite

# Declared after /data is owned by the relay's user, so a new named volume
# inherits that ownership.
VOLUME /data
WORKDIR /data
EXPOSE 7777
USER 10001:10001
# The relay drains on SIGTERM: it stops accepting, lets open connections get
# their last answers and the writer finish its last commit (give it time:
# `docker run --stop-timeout 30`, compose's `stop_grace_period`).
STOPSIGNAL SIGTERM
# GET /health on the listen port (https when tls_cert is set) without curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["nostr-relayd", "--config", "/etc/nostr-relayd/relay.toml", "healthcheck"]
ENTRYPOINT ["nostr-relayd", "--config", "/etc/nostr-relayd/relay.toml"]
CMD ["serve"]
