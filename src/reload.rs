//! SIGHUP: relay.toml read again and put in force without a restart, as
//! far as that is safe.
//!
//! The settings that connections consult per message live in one [`Live`]
//! snapshot (`Shared::live`, an `ArcSwap`): a reload builds a new one and
//! swaps it in, and each connection picks it up from its next message. The
//! pieces that keep their own state are told in place: the rate limiters
//! (`RateLimits::reconfigure`), the event policy (`WritePolicy::set_limits`),
//! the access lists and the NIP-11 document (`AccessControl::reconfigure`),
//! and the log filter (`logging::set_filter`).
//!
//! What is live is a list of keys ([`LIVE_KEYS`]), plus `tls_cert` and
//! `tls_key` on a relay that serves TLS (new paths are loaded; switching
//! between plain and TLS is not); every other key (the address, the
//! database, storage threads, the plugin, and any key added later) needs a
//! restart. The TLS certificate files are read again at every reload
//! (renewals keep their paths). A reload compares the new file with
//! the settings in force key by key: live keys take the new value,
//! restart-only keys keep the running one and are named in the log, one
//! line each, at every reload until the relay restarts. An invalid file
//! changes nothing.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::{Config, ConfigError};
use crate::server::Shared;
use crate::store::QueryLimits;

/// The settings connections read per message, as of the last reload.
#[derive(Debug)]
pub struct Live {
    /// The configuration in force: the file's values for the live keys,
    /// the start-up values for the others.
    pub config: Config,
    /// `limits.default_limit` and `limits.max_limit`, for queries.
    pub query_limits: QueryLimits,
    /// WebSocket frame and buffer sizes for connections opened from now on
    /// (`limits.max_message_length`: an open connection keeps its own).
    pub websocket: WebSocketConfig,
}

impl Live {
    /// The snapshot `config` describes.
    pub fn new(config: Config) -> Live {
        let max_message = config.limits.max_message_length;
        Live {
            query_limits: QueryLimits {
                default_limit: config.limits.default_limit,
                max_limit: config.limits.max_limit,
            },
            websocket: WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message))
                // Initial read buffer: tungstenite reserves a frame's full
                // length once it has read the header, so this only sizes
                // the idle buffer (and the largest single read).
                .read_buffer_size(1024)
                .write_buffer_size(8192)
                .max_write_buffer_size(max_message.saturating_mul(4).max(1 << 20)),
            config,
        }
    }
}

/// The keys a reload applies (a section name covers all its keys). When
/// each takes effect:
/// - `log_level`, `info.*`, `access.*`, `rate_limit.*`: at once;
/// - `limits.*`, `auth.required_for_*`, `auth.private_kinds`,
///   `negentropy.*`: from each connection's next message (an event already
///   being checked keeps the limits it started with);
/// - `limits.max_message_length`, `auth.enabled`, and the `network` keys
///   listed: for connections opened after the reload;
/// - `network.shutdown_timeout_seconds`: at the next stop.
pub const LIVE_KEYS: &[&str] = &[
    "log_level",
    "info",
    "limits",
    "auth",
    "access",
    "rate_limit",
    "negentropy",
    "network.ping_interval_seconds",
    "network.send_queue_events",
    "network.max_events_in_flight",
    "network.shutdown_timeout_seconds",
];

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new value is in force (dotted: `limits.max_subscriptions`).
    pub applied: Vec<String>,
    /// Keys that changed in the file but need a restart; the running
    /// relay keeps its value for them.
    pub needs_restart: Vec<String>,
    /// Why the TLS certificate could not be loaded again, if it could not
    /// (the previous one stays in use).
    pub tls_error: Option<String>,
}

/// Whether a reload may apply `key`.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key == *live
            || key
                .strip_prefix(live)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The configuration a reload puts in force, and which keys changed:
/// `new`'s values for live keys, `running`'s for the others. Errors if the
/// result is not a valid configuration (it is validated whole).
pub fn merge(running: &Config, new: &Config) -> Result<(Config, ReloadReport), ConfigError> {
    merge_keys(running, new, is_live)
}

/// [`merge`], with `live` deciding which keys a reload may apply.
fn merge_keys(
    running: &Config,
    new: &Config,
    live: impl Fn(&str) -> bool,
) -> Result<(Config, ReloadReport), ConfigError> {
    new.validate()?;
    let as_value = |config: &Config| {
        toml::Value::try_from(config)
            .map_err(|e| ConfigError(format!("cannot compare configurations: {e}")))
    };
    let running_value = as_value(running)?;
    let new_value = as_value(new)?;
    let mut changed = Vec::new();
    diff(&running_value, &new_value, "", &mut changed);
    let (applied, needs_restart): (Vec<String>, Vec<String>) =
        changed.into_iter().partition(|key| live(key));
    let mut merged = new_value;
    for key in &needs_restart {
        set_path(&mut merged, key, get_path(&running_value, key).cloned());
    }
    let config: Config = merged
        .try_into()
        .map_err(|e| ConfigError(format!("cannot merge configurations: {e}")))?;
    config.validate()?;
    let report = ReloadReport {
        applied,
        needs_restart,
        tls_error: None,
    };
    Ok((config, report))
}

/// Puts `new` in force on a running relay (see the module documentation).
pub(crate) async fn apply(shared: &Shared, new: Config) -> Result<ReloadReport, ConfigError> {
    let running = shared.live.load_full();
    // validate() has made sure tls_cert and tls_key are set together.
    let serving_tls = shared.tls.is_some() && !new.tls_cert.as_os_str().is_empty();
    let live = |key: &str| is_live(key) || (serving_tls && (key == "tls_cert" || key == "tls_key"));
    let (config, mut report) = merge_keys(&running.config, &new, live)?;
    // TLS: the files are read again whatever changed (certbot renews in
    // place); a pair that does not load is logged, the old one stays.
    if let Some(tls) = &shared.tls
        && let Err(error) = tls.reload_for(&config)
    {
        report.tls_error = Some(error.to_string());
    }
    if report.applied.is_empty() {
        log(&report);
        return Ok(report);
    }
    // The one step that can fail (it reads the stored lists) comes before
    // any other, so that a failure leaves everything as it was.
    let access = shared.access.clone();
    let reconfigured = config.clone();
    tokio::task::spawn_blocking(move || access.reconfigure(&reconfigured))
        .await
        .map_err(|e| ConfigError(format!("access lists: {e}")))?
        .map_err(|e| ConfigError(format!("access lists: {e}")))?;
    if report.applied.iter().any(|key| key == "log_level") {
        // Validated above; fails only where no subscriber was installed
        // by `logging::init` (a relay embedded in a test).
        if let Err(error) = crate::logging::set_filter(&config.log_level) {
            tracing::debug!(%error, "log_level not applied");
        }
    }
    shared.rate_limits.reconfigure(&config.rate_limit);
    shared.ingester.policy.set_limits(&config.limits);
    shared.live.store(Arc::new(Live::new(config)));
    log(&report);
    Ok(report)
}

/// One line for what was applied, one per key that needs a restart.
fn log(report: &ReloadReport) {
    for key in &report.needs_restart {
        tracing::warn!(
            key = key.as_str(),
            "relay.toml: {key} changed, which needs a restart; still running with the old value"
        );
    }
    if report.applied.is_empty() {
        tracing::info!("configuration reloaded; nothing to apply");
    } else {
        tracing::info!(
            applied = report.applied.join(", "),
            "configuration reloaded"
        );
    }
}

/// Appends to `out` the dotted keys whose values differ. Tables are
/// compared key by key; anything else (arrays included) as a whole.
fn diff(old: &toml::Value, new: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(old), toml::Value::Table(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (old.get(key), new.get(key)) {
                    (Some(a), Some(b)) => diff(a, b, &path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if old != new => out.push(prefix.to_owned()),
        _ => {}
    }
}

fn get_path<'v>(value: &'v toml::Value, key: &str) -> Option<&'v toml::Value> {
    key.split('.')
        .try_fold(value, |value, part| value.get(part))
}

/// Sets (or, with `None`, removes) the value at a dotted key of a table.
fn set_path(value: &mut toml::Value, key: &str, to: Option<toml::Value>) {
    let (parents, last) = match key.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, key),
    };
    let mut table = value;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        match table.get_mut(part) {
            Some(inner) => table = inner,
            None => return,
        }
    }
    let Some(table) = table.as_table_mut() else {
        return;
    };
    match to {
        Some(to) => {
            table.insert(last.to_owned(), to);
        }
        None => {
            table.remove(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_matched_by_section_or_exactly() {
        assert!(is_live("limits.max_subscriptions"));
        assert!(is_live("log_level"));
        assert!(is_live("network.shutdown_timeout_seconds"));
        assert!(!is_live("network.max_connections"));
        assert!(!is_live("listen"));
        assert!(!is_live("storage.reader_threads"));
        assert!(!is_live("limitsx.y"), "a prefix is not a section");
        assert!(!is_live("tls_cert"));
    }

    #[test]
    fn restart_only_keys_keep_the_running_value() {
        let running = Config::default();
        let mut new = Config::default();
        new.limits.max_subscriptions = 3;
        new.info.name = "Renamed".into();
        new.listen = "127.0.0.1:9999".into();
        new.storage.reader_threads = 2;
        new.access.denied_pubkeys = vec!["ab".repeat(32)];
        let (merged, report) = merge(&running, &new).unwrap();
        assert_eq!(merged.limits.max_subscriptions, 3);
        assert_eq!(merged.info.name, "Renamed");
        assert_eq!(merged.access.denied_pubkeys, new.access.denied_pubkeys);
        assert_eq!(merged.listen, running.listen);
        assert_eq!(
            merged.storage.reader_threads,
            running.storage.reader_threads
        );
        assert_eq!(
            report.applied,
            [
                "access.denied_pubkeys",
                "info.name",
                "limits.max_subscriptions"
            ]
        );
        assert_eq!(report.needs_restart, ["listen", "storage.reader_threads"]);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let (merged, report) = merge(&Config::default(), &Config::default()).unwrap();
        assert_eq!(merged, Config::default());
        assert_eq!(report, ReloadReport::default());
    }

    #[test]
    fn an_invalid_file_is_refused_naming_the_key() {
        let mut new = Config::default();
        new.limits.default_limit = new.limits.max_limit + 1;
        let error = merge(&Config::default(), &new).unwrap_err();
        assert!(error.0.contains("limits.default_limit"), "{error}");
    }
}
