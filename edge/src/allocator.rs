//! The binary's allocator: jemalloc, set up to give memory back.
//!
//! A burst (many clients resuming from old seqs, large events, slow
//! clients) makes the node allocate and free a lot within seconds. glibc's
//! malloc returns little of it: it only trims the top of each arena, so the
//! process stayed at its peak after the clients left (five `?after=0`
//! subscribers on a task of 60 KB events: 385 MB, then 917 MB for good).
//! jemalloc purges pages freed [`DIRTY_DECAY_MS`] ago on a background
//! thread, so the RSS follows what the node holds, a second or so behind.
//! `tests/BENCHMARKS.md` ("Memory after a burst") has the figures.
//!
//! `main.rs` installs it as the global allocator (with the `jemalloc`
//! feature, on by default); [`configure`] runs once at start.

use tikv_jemalloc_ctl::{background_thread, Access, AsName};

/// Pages freed this long ago are returned to the OS (jemalloc's default is
/// 10 s).
pub const DIRTY_DECAY_MS: isize = 1_000;

/// Turns on background purging and the decay time; a line for the start-up
/// log, or why it could not.
pub fn configure() -> Result<String, String> {
    background_thread::write(true).map_err(|e| format!("background_thread: {e}"))?;
    // Arenas created from now on (one per thread group, lazily) ...
    b"arenas.dirty_decay_ms\0"
        .name()
        .write(DIRTY_DECAY_MS)
        .map_err(|e| format!("arenas.dirty_decay_ms: {e}"))?;
    b"arenas.muzzy_decay_ms\0"
        .name()
        .write(0isize)
        .map_err(|e| format!("arenas.muzzy_decay_ms: {e}"))?;
    // ... and the ones that exist already (arena 0 at least). An arena not
    // created yet refuses the write; it will take the default above.
    let narenas: u32 = b"arenas.narenas\0"
        .name()
        .read()
        .map_err(|e| format!("arenas.narenas: {e}"))?;
    for i in 0..narenas {
        let dirty = format!("arena.{i}.dirty_decay_ms\0");
        let muzzy = format!("arena.{i}.muzzy_decay_ms\0");
        let _ = dirty.as_bytes().name().write(DIRTY_DECAY_MS);
        let _ = muzzy.as_bytes().name().write(0isize);
    }
    Ok(format!(
        "jemalloc, background purging, dirty pages returned after {DIRTY_DECAY_MS} ms"
    ))
}
