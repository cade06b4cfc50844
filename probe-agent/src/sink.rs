//! Sinks: where the JSON lines go. For now, stdout.

use std::io::{self, Write as _};

/// Errors of the sink stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (a closed pipe): a normal end, not a failure.
    #[error("stdout closed")]
    Closed,
    #[error("writing to stdout: {0}")]
    Io(io::Error),
}

/// Writes one interval's lines to stdout in a single write, so records are
/// never interleaved with anything else mid-line.
pub fn write_stdout(lines: &[u8]) -> Result<(), SinkError> {
    let mut out = io::stdout().lock();
    match out.write_all(lines).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(SinkError::Closed),
        Err(e) => Err(SinkError::Io(e)),
    }
}
