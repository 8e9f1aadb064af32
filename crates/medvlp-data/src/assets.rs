//! Locating the shared test assets (`../shared/assets`) for tests.
//!
//! Tests call [`asset_path`]: without `MEDVLP_ASSETS` they are skipped with a message; with
//! `MEDVLP_REQUIRE_ASSETS=1` (set by `.ci/run`) a missing variable or file fails the test instead.

use std::path::PathBuf;

/// Path of `rel` under `$MEDVLP_ASSETS`, or `None` (after printing a skip notice) when assets are
/// not configured. Panics when `MEDVLP_REQUIRE_ASSETS=1` and the asset is not there: that is the
/// CI contract, and a panic is how a test fails.
pub fn asset_path(rel: &str) -> Option<PathBuf> {
    let required = std::env::var("MEDVLP_REQUIRE_ASSETS").map(|v| v == "1").unwrap_or(false);
    match std::env::var_os("MEDVLP_ASSETS") {
        Some(root) => {
            let p = PathBuf::from(root).join(rel);
            if p.exists() {
                Some(p)
            } else if required {
                panic!("required asset {} is missing (MEDVLP_REQUIRE_ASSETS=1)", p.display());
            } else {
                eprintln!("skipped: asset {} not found", p.display());
                None
            }
        }
        None if required => {
            panic!("MEDVLP_ASSETS is not set but MEDVLP_REQUIRE_ASSETS=1 (asset {rel})")
        }
        None => {
            eprintln!("skipped: set MEDVLP_ASSETS to run this test (needs {rel})");
            None
        }
    }
}
