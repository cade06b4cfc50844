//! The one reader of recorded JSON lines, for the offline commands
//! (`replay`, `report`, `compare`, `merge`): the only place the agent
//! parses its own output.
//!
//! It streams: one interval (the records sharing a `ts`) at a time, so a
//! command's memory is bounded by what it keeps, not by the file. A line
//! longer than [`MAX_LINE_BYTES`] is skipped without being held (a
//! recording cut mid-line, or not a recording at all), counted, and said
//! at the end.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
};

use serde_json::Value;

use crate::{commands::CommandError, timefmt::parse_rfc3339};

/// Longest line read. The agent's longest records (an `agent` record with
/// many sinks) are a few KiB.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A recording being read.
pub struct Recording {
    input: BufReader<Box<dyn Read>>,
    shown: String,
    line_no: usize,
    /// Lines skipped for being longer than [`MAX_LINE_BYTES`].
    pub long_lines: u64,
    /// The first record of the next interval, read ahead.
    next: Option<(String, f64, Value)>,
    done: bool,
}

impl Recording {
    /// Opens a file, or stdin for `-`.
    pub fn open(path: &Path) -> Result<Self, CommandError> {
        let shown = path.display().to_string();
        let input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(path)
                    .map_err(|source| CommandError::Read { path: shown.clone(), source })?,
            )
        };
        Ok(Self::from_reader(input, shown))
    }

    pub fn from_reader(input: Box<dyn Read>, shown: String) -> Self {
        Recording {
            input: BufReader::with_capacity(64 << 10, input),
            shown,
            line_no: 0,
            long_lines: 0,
            next: None,
            done: false,
        }
    }

    /// The next line, without its newline; `None` at the end. A line
    /// longer than the bound is read through and skipped.
    fn line(&mut self, buf: &mut Vec<u8>) -> Result<Option<()>, CommandError> {
        loop {
            buf.clear();
            let mut too_long = false;
            loop {
                let chunk = self
                    .input
                    .fill_buf()
                    .map_err(|source| CommandError::Read { path: self.shown.clone(), source })?;
                if chunk.is_empty() {
                    if buf.is_empty() && !too_long {
                        return Ok(None);
                    }
                    break;
                }
                let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (i, true),
                    None => (chunk.len(), false),
                };
                if !too_long && buf.len() + take <= MAX_LINE_BYTES {
                    buf.extend_from_slice(&chunk[..take]);
                } else {
                    too_long = true;
                    buf.clear();
                }
                self.input.consume(take + usize::from(end));
                if end {
                    break;
                }
            }
            self.line_no += 1;
            if too_long {
                self.long_lines += 1;
                continue;
            }
            return Ok(Some(()));
        }
    }

    /// The next record, with its `ts` and that time in seconds.
    fn record(&mut self) -> Result<Option<(String, f64, Value)>, CommandError> {
        let mut buf = Vec::new();
        loop {
            if self.line(&mut buf)?.is_none() {
                return Ok(None);
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad = |message: String| CommandError::Record {
                path: self.shown.clone(),
                line: self.line_no,
                message,
            };
            let rec: Value =
                serde_json::from_slice(&buf).map_err(|e| bad(format!("not a JSON record: {e}")))?;
            let ts = rec["ts"].as_str().ok_or_else(|| bad("record without ts".into()))?.to_string();
            let secs = parse_rfc3339(&ts).ok_or_else(|| bad(format!("bad ts {ts:?}")))?;
            return Ok(Some((ts, secs, rec)));
        }
    }

    /// The next interval: its time (seconds since the epoch) and records.
    pub fn next_interval(&mut self) -> Result<Option<(f64, Vec<Value>)>, CommandError> {
        if self.done {
            return Ok(None);
        }
        let Some((ts, secs, first)) = (match self.next.take() {
            Some(r) => Some(r),
            None => self.record()?,
        }) else {
            self.done = true;
            return Ok(None);
        };
        let mut records = vec![first];
        loop {
            match self.record()? {
                Some((t, _, r)) if t == ts => records.push(r),
                Some(other) => {
                    self.next = Some(other);
                    break;
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        Ok(Some((secs, records)))
    }

    /// Says on stderr what was skipped, if anything.
    pub fn finish(&self) {
        if self.long_lines > 0 {
            eprintln!(
                "probe-agent: {}: skipped {} line(s) longer than {} bytes",
                self.shown, self.long_lines, MAX_LINE_BYTES
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(text: String) -> Recording {
        Recording::from_reader(Box::new(std::io::Cursor::new(text.into_bytes())), "t".into())
    }

    #[test]
    fn intervals_are_records_sharing_a_ts_and_long_lines_are_skipped() {
        let a = r#"{"ts":"2026-11-29T10:00:00.000Z","type":"host"}"#;
        let b = r#"{"ts":"2026-11-29T10:00:10.000Z","type":"host"}"#;
        let long = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_LINE_BYTES + 10));
        let mut r = rec(format!("{a}\n{a}\n\n{long}\n{b}"));
        let (s1, i1) = r.next_interval().unwrap().unwrap();
        assert_eq!(i1.len(), 2);
        let (s2, i2) = r.next_interval().unwrap().unwrap();
        assert_eq!((i2.len(), s2 - s1), (1, 10.0));
        assert!(r.next_interval().unwrap().is_none());
        assert_eq!(r.long_lines, 1);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let mut r = rec("{\"ts\":\"2026-11-29T10:00:00.000Z\"}\nnot json\n".into());
        let err = r.next_interval().unwrap_err().to_string();
        assert!(err.starts_with("t:2: not a JSON record"), "{err}");
    }
}
