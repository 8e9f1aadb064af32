//! Panics inside third-party decoders (dicom-rs, jpeg-decoder, image), caught and kept off
//! stderr: a malformed file is reported as one error line naming it, never as a panic message
//! followed by that line.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

thread_local! {
    /// How many [`catch_quiet`] calls are running on this thread (they nest).
    static QUIET: Cell<u32> = const { Cell::new(0) };
}
static HOOK: Once = Once::new();

/// Runs `f`; a panic becomes `Err(its message)` and, while `f` runs, does not print. Panics on
/// other threads, and on this one outside `f`, go to the hook that was installed before.
pub fn catch_quiet<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info)
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let out = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    out.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_their_message() {
        assert_eq!(catch_quiet(|| 7), Ok(7));
        let r: Result<(), String> = catch_quiet(|| panic!("bad header {}", 3));
        assert_eq!(r, Err("bad header 3".into()));
        // Nested guards: the inner one catches, the outer one sees a value.
        let r = catch_quiet(|| catch_quiet(|| -> u8 { panic!("inner") }).unwrap_err());
        assert_eq!(r, Ok("inner".to_string()));
        assert_eq!(QUIET.with(|q| q.get()), 0);
    }
}
