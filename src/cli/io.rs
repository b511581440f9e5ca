//! Line-oriented input and output for the offline commands.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;

/// Opens `path` for reading, or standard input when `None`.
pub fn open_input(path: Option<&Path>) -> anyhow::Result<Box<dyn BufRead>> {
    Ok(match path {
        Some(path) => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("cannot open input {}", path.display()))?,
        )),
        None => Box::new(BufReader::new(io::stdin().lock())),
    })
}

/// Creates `path` for writing, or standard error when `None`.
pub fn open_errors(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create errors file {}", path.display()))?,
        )),
        None => Box::new(io::stderr().lock()),
    })
}

/// Standard output, buffered.
pub fn stdout() -> BufWriter<io::StdoutLock<'static>> {
    BufWriter::with_capacity(64 * 1024, io::stdout().lock())
}

/// One input line: its 1-based number and its text, or why it is not text.
pub struct Line {
    /// 1-based line number in the input.
    pub number: usize,
    /// The line without its terminator, or an error if it is not UTF-8.
    pub text: Result<String, String>,
}

/// Iterates over the lines of `input`, skipping blank ones and keeping physical line numbers.
pub fn lines(mut input: Box<dyn BufRead>) -> impl Iterator<Item = io::Result<Line>> {
    let mut number = 0;
    std::iter::from_fn(move || {
        loop {
            let mut buffer = Vec::new();
            match input.read_until(b'\n', &mut buffer) {
                Ok(0) => return None,
                Ok(_) => {
                    number += 1;
                    while matches!(buffer.last(), Some(b'\n' | b'\r')) {
                        buffer.pop();
                    }
                    if buffer.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let text = String::from_utf8(buffer).map_err(|_| "The line is not valid UTF-8.".to_string());
                    return Some(Ok(Line { number, text }));
                }
                Err(error) => return Some(Err(error)),
            }
        }
    })
}

/// Writes one error record `{"line": N, "error": kind, "message": text}`, members in that order.
pub fn write_error_record(out: &mut dyn Write, line: usize, kind: &str, message: &str) -> io::Result<()> {
    let mut record = format!("{{\"line\":{line},\"error\":");
    crate::json::write_json_string(kind, &mut record);
    record.push_str(",\"message\":");
    crate::json::write_json_string(message, &mut record);
    record.push_str("}\n");
    out.write_all(record.as_bytes())
}
