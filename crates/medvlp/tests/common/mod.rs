//! Helpers shared by the binary's integration tests (each test file is its own crate and uses
//! a subset, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The release `medvlp` binary under test.
pub fn medvlp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medvlp"))
}

/// A fresh, empty folder `medvlp-<tag>-<pid>` under the system temp dir.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medvlp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cmd`, which must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
