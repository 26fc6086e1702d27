// Planning a large experiment is allocation-bound (tens of thousands of small
// attribute maps); mimalloc roughly halves that cost over glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::{c_int, c_long};

/// `mi_option_purge_delay`: its index in `mi_option_e` of mimalloc v3 (what
/// libmimalloc-sys 0.1.49 builds; the crate does not name it). The only
/// option whose default is 1000.
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// mimalloc v3's default purge delay, in ms.
const V3_DEFAULT_PURGE_DELAY_MS: c_long = 1000;

unsafe extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// mimalloc v3 keeps freed memory for a second before giving it back, so
/// memory freed by one phase of `plan` (the document, the lab, the
/// resources) still counts when the next one peaks: ~110 MiB of the peak
/// RSS at 10^5 VMs. Purge after 10 ms (mimalloc v2's default) instead,
/// unless the delay is not the v3 default (set by `MIMALLOC_PURGE_DELAY`,
/// or another mimalloc whose option list differs).
fn purge_freed_memory_soon() {
    // SAFETY: plain option getters/setters of the linked mimalloc; they take
    // and return integers and touch no memory of ours.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == V3_DEFAULT_PURGE_DELAY_MS {
            mi_option_set(MI_OPTION_PURGE_DELAY, 10);
        }
    }
}

fn main() -> std::process::ExitCode {
    purge_freed_memory_soon();
    megaplan::cli::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index names the purge delay: it has the v3 default, and setting
    /// it is what the option reads back.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must not set MIMALLOC_PURGE_DELAY"
            );
            return;
        }
        // SAFETY: as in `purge_freed_memory_soon`.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, V3_DEFAULT_PURGE_DELAY_MS);
        purge_freed_memory_soon();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 10);
    }
}
