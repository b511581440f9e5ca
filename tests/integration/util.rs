//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The fixed "now" used by every CLI run, so outputs are reproducible.
pub const FIXED_NOW: &str = "2024-01-01T00:00:00Z";

/// The `iomt` binary under test, with a fixed clock.
pub fn iomt() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iomt"));
    command.env("IOMT_NOW", FIXED_NOW);
    command
}

/// Runs `command` with `stdin` as standard input.
pub fn run_with_stdin(mut command: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iomt starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("stdin accepts input");
    child.wait_with_output().expect("iomt finishes")
}

/// The repository's `tests/fixtures` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a directory under the system temp dir.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("iomt-test-{name}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&path).expect("temp dir is created");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Compares `actual` with the file at `expected`; with `IOMT_BLESS=1` rewrites the file instead.
pub fn assert_matches_file(expected: &Path, actual: &str, context: &str) {
    if std::env::var_os("IOMT_BLESS").is_some() {
        if actual.is_empty() {
            let _ = std::fs::remove_file(expected);
        } else {
            std::fs::write(expected, actual).expect("expected file is written");
        }
        return;
    }
    let wanted = std::fs::read_to_string(expected).unwrap_or_default();
    if wanted != actual {
        panic!(
            "{context}: output differs from {}\n--- expected\n{wanted}\n--- actual\n{actual}\n(run with IOMT_BLESS=1 to accept the new output after reviewing it)",
            expected.display()
        );
    }
}
