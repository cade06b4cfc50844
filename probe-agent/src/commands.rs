//! Commands that need no probes: configuration, replay of recorded lines,
//! and the KPI definitions.

use std::{io::Write as _, path::Path};

use crate::{
    config::{self, Config},
    records::Record,
    rules::Engine,
};

/// Errors of the offline commands: all are bad input (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Record { path: String, line: usize, message: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Writes a command's output to stdout; a reader that went away (`| head`)
/// is a normal end, not a failure (print! would panic).
fn out(text: &str) -> Result<(), CommandError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CommandError::Read { path: "stdout".into(), source: e })
        }
        _ => Ok(()),
    }
}

/// `config --default`: the commented default configuration.
pub fn print_default_config() -> Result<(), CommandError> {
    out(&config::default_text())
}

/// `check-config FILE`.
pub fn check_config(path: &Path) -> Result<(), CommandError> {
    let cfg = config::load(path)?;
    let enabled = cfg.rules.iter().filter(|r| r.enabled).count();
    out(&format!(
        "{}: valid ({} rules, {enabled} enabled, profile {})\n",
        path.display(),
        cfg.rules.len(),
        cfg.profile.name()
    ))
}

/// The KPI records of recorded lines (other types are skipped).
pub fn typed(values: Vec<serde_json::Value>, path: &Path) -> Result<Vec<Record>, CommandError> {
    let mut out = Vec::new();
    for v in values {
        let seq = v.get("seq").and_then(serde_json::Value::as_u64);
        match Record::from_value(v) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => {
                return Err(CommandError::Record {
                    path: path.display().to_string(),
                    line: 0,
                    message: format!("record seq {seq:?}: {e}"),
                });
            }
        }
    }
    Ok(out)
}

/// `replay FILE`: the alerts the rules would raise over recorded lines.
pub fn replay(path: &Path, config: Option<&Path>) -> Result<(), CommandError> {
    let cfg = match config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    };
    let mut engine = Engine::new(&cfg);
    let mut out = std::io::stdout().lock();
    let mut rec = crate::recording::Recording::open(path)?;
    while let Some((secs, values)) = rec.next_interval()? {
        // Alerts recorded by the agent itself are not KPI records.
        let records = typed(values, path)?;
        let kpis: Vec<Record> =
            records.into_iter().filter(|r| r.kind() != crate::records::Kind::Alert).collect();
        for alert in engine.evaluate(&kpis, secs) {
            let line = serde_json::to_string(&alert).map_err(|e| CommandError::Record {
                path: path.display().to_string(),
                line: 0,
                message: e.to_string(),
            })?;
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // closed pipe: a normal end
            }
        }
    }
    rec.finish();
    Ok(())
}

fn load(config: Option<&Path>) -> Result<Config, CommandError> {
    Ok(match config {
        Some(p) => config::load(p)?,
        None => Config::default(),
    })
}

/// Writes a command's HTML file (a report's charts).
fn write_html(path: &Path, html: &str) -> Result<(), CommandError> {
    std::fs::write(path, html)
        .map_err(|source| CommandError::Write { path: path.display().to_string(), source })
}

/// `report FILE [--html OUT]`: Markdown on stdout, and the HTML file.
pub fn report(path: &Path, config: Option<&Path>, html: Option<&Path>) -> Result<(), CommandError> {
    let data = crate::report::collect(path, &load(config)?)?;
    if let Some(h) = html {
        write_html(h, &crate::report::html(&data))?;
    }
    out(&crate::report::markdown(&data))
}

/// `compare BASELINE CURRENT [--html OUT]`.
pub fn compare(
    baseline: &Path,
    current: &Path,
    config: Option<&Path>,
    html: Option<&Path>,
) -> Result<(), CommandError> {
    let cmp = crate::report::compare(baseline, current, &load(config)?)?;
    if let Some(h) = html {
        write_html(h, &crate::report::compare_html(&cmp))?;
    }
    out(&crate::report::compare_markdown(&cmp))
}

/// `kpis`: every KPI the agent emits, as a Markdown table (the catalogue).
pub fn print_kpis() -> Result<(), CommandError> {
    out(&crate::catalogue::table())
}
