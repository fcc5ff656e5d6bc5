//! The C allocator tuned for training on the CPU.
//!
//! A training step allocates and frees tensors of tens to hundreds of megabytes (logits, their
//! gradient, the embedding's gradient) many times. glibc's `malloc` serves blocks above its
//! mmap threshold with fresh `mmap`s and returns them on `free`, so every step the kernel
//! zeroes those pages again (about 30 % of a step's samples in a profile). [`tune`] keeps them
//! in the heap instead (`M_MMAP_MAX = 0`) and stops `free` from trimming the heap below 2 GiB
//! (`M_TRIM_THRESHOLD`): freed blocks are reused without page faults.
//!
//! Measured on the 2-core development machine, one SFT step of SmolLM2 (`benches/peer_sft_step`):
//! B 2 × T 128 from 71–75 to 86–89 tokens/s, B 8 × T 256 from 115 to 118, peak memory +3 %.
//! mimalloc, tried in its place, was slower (56–60 tokens/s; 70–74 with purging off), so the
//! system allocator stays. Elsewhere than Linux with glibc this does nothing.

/// Tunes glibc's allocator for large, short-lived tensors (see the [module](self) docs).
/// Call once at the start of a program, before the model loads; later calls do nothing more.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before other threads
    // allocate heavily, and both parameters accept these values.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// For a long-running service ([`tune`] first): one heap for every thread (`M_ARENA_MAX =
/// 1`), so that [`release`] can hand back everything freed. Without it, each thread that
/// parsed a large request keeps an arena whose top `malloc_trim` does not shrink (glibc trims
/// only the main arena's top, and [`tune`]'s threshold stops `free` from doing it).
pub fn tune_for_service() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the memory `free` kept (all of it, [`tune`] or not) back to the system: for a
/// long-running process between bursts, such as `opd serve` when its queue is empty.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
