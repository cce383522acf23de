//! `corpus`: the deterministic corpus as JSON lines, one signed event per
//! line (what `strfry export` writes and `nostr-relayd import` reads), for
//! import and export benchmarks and for loading other relays the same way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use nostr_relayd::corpus::Corpus;
use serde_json::{Value, json};

use crate::{Common, Report, presign};

#[derive(Args, Clone, Debug)]
pub struct CorpusArgs {
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// The file to write (created or truncated).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
}

pub async fn run(common: &Common, args: &CorpusArgs) -> Result<Report, String> {
    let mut corpus = Corpus::new(common.seed, common.authors, common.corpus_now());
    let (events, signing) = presign(&mut corpus, args.events);
    let started = Instant::now();
    let file = File::create(&args.output)
        .map_err(|e| format!("cannot create {}: {e}", args.output.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = 0u64;
    for event in &events {
        out.write_all(event.json.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| format!("writing {}: {e}", args.output.display()))?;
        bytes += event.json.len() as u64 + 1;
    }
    out.flush()
        .map_err(|e| format!("writing {}: {e}", args.output.display()))?;
    let human = format!(
        "corpus: {} events, {:.1} MB, to {} (signed in {signing:.1} s, written in {:.2} s)",
        events.len(),
        bytes as f64 / 1e6,
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    let mut map = common.json_fields("corpus");
    map.insert("events".into(), json!(events.len()));
    map.insert("bytes".into(), json!(bytes));
    map.insert("output".into(), json!(args.output.display().to_string()));
    Ok(Report {
        human,
        json: Value::Object(map),
        success: true,
    })
}
