//! The process's allocator: glibc's malloc (mimalloc in the static musl build, see Cargo.toml), with every
//! block of 4 KiB or more aligned to a 64-byte cache line.
//!
//! Why: on AMD Zen processors (the development machine is an AMD EPYC) both glibc 2.36 and the kernel copy
//! 4 KiB or more with `rep movsb`, which runs many times slower when the destination lies 1 to 31 bytes past
//! the source modulo 4 KiB (`make bench` measures a 16 KiB `memcpy` in that band next to an aligned one;
//! `docs/performance.md` has the figures). Below 4 KiB glibc copies with vector loops, which do not care.
//! Receiving output, rustls copies each record's plaintext from just past its 5-byte header into a new buffer:
//! with malloc's 16-byte alignment a run landed in that band for every record or for none, depending on where
//! the heap happened to put its buffers, and the client's CPU per GiB streamed swung by more than twice from
//! one run to the next. With both buffers on
//! cache lines that copy's destination is 59 bytes past its source modulo 64, so never in the band. Copies the
//! other way (plaintext to just past a header) are 5 bytes apart modulo 64 and still can be; where the server
//! places the plaintext itself (an output message), `server::follower` moves it through the page from one message
//! to the next so that no run is in the band for every message.
//!
//! The costs: a few bytes of padding per large block; growing such a block allocates and copies instead of
//! `realloc`ing in place; and a large zeroed block is zeroed by hand rather than taken as fresh zero pages
//! (calloc's shortcut needs malloc's own alignment). All are rare next to the copies this speeds up.

use std::alloc::{GlobalAlloc, Layout};

/// What actually manages memory underneath.
#[cfg(not(target_env = "musl"))]
const INNER: std::alloc::System = std::alloc::System;
#[cfg(target_env = "musl")]
const INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Blocks at least this large are cache-line aligned: the size from which glibc copies with `rep movsb` here.
const ALIGNED_FROM: usize = 4096;

/// Cache line size on x86-64 (and most other targets runnel could run on).
const CACHE_LINE: usize = 64;

pub struct CacheLineAllocator;

/// The layout asked of the inner allocator for `layout`; `None` if aligning it would overflow (a size within 63
/// bytes of `isize::MAX`), which the caller reports as an allocation failure.
fn inner_layout(layout: Layout) -> Option<Layout> {
    if layout.size() >= ALIGNED_FROM {
        layout.align_to(CACHE_LINE).ok()
    } else {
        Some(layout)
    }
}

// SAFETY: every method forwards to `INNER` with a layout derived from the caller's by `inner_layout` alone, so
// a block is always freed or resized with the layout it was allocated with; an alignment at least as strict as
// the one asked for satisfies the caller; a layout that cannot be aligned is a null (failed) allocation.
unsafe impl GlobalAlloc for CacheLineAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match inner_layout(layout) {
            // SAFETY: as for the impl; `layout` has a non-zero size (the caller's contract).
            Some(inner) => unsafe { INNER.alloc(inner) },
            None => std::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match inner_layout(layout) {
            // SAFETY: as for `alloc`.
            Some(inner) => unsafe { INNER.alloc_zeroed(inner) },
            None => std::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A layout `inner_layout` refuses was never allocated (its allocation returned null), so the fallback
        // is never taken.
        let inner = inner_layout(layout).unwrap_or(layout);
        // SAFETY: `ptr` came from `alloc` with `layout`, i.e. from `INNER` with `inner`.
        unsafe { INNER.dealloc(ptr, inner) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < ALIGNED_FROM && new_size < ALIGNED_FROM {
            // Small before and after: the inner allocator's own (in-place where it can) realloc.
            // SAFETY: `ptr` was allocated by `INNER` with `layout`; `new_size` is valid for it (caller's contract).
            return unsafe { INNER.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees `new_size` rounded up to `layout.align()` does not overflow `isize`,
        // which is all `Layout` requires (as std's default `realloc` relies on too).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`; the new layout is valid and non-zero (caller's contract).
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new)` bytes long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_cache_line_aligned_and_keep_their_contents_when_resized() {
        let allocator = CacheLineAllocator;
        let small = Layout::from_size_align(100, 1).unwrap();
        // SAFETY: layouts are non-zero; each block is freed once with the layout it has at that moment.
        unsafe {
            let block = allocator.alloc(small);
            assert!(!block.is_null());
            block.write_bytes(0x5a, 100);
            // Growing past the threshold moves the block onto a cache line and keeps the bytes.
            let grown = allocator.realloc(block, small, 10_000);
            assert_eq!(grown as usize % CACHE_LINE, 0);
            assert!((0..100).all(|i| *grown.add(i) == 0x5a));
            let large = Layout::from_size_align(10_000, 1).unwrap();
            let shrunk = allocator.realloc(grown, large, 50);
            assert!((0..50).all(|i| *shrunk.add(i) == 0x5a));
            allocator.dealloc(shrunk, Layout::from_size_align(50, 1).unwrap());

            // A size that cannot be rounded up to a cache line is a failed allocation, not a panic.
            assert!(allocator.alloc(Layout::from_size_align(isize::MAX as usize - 10, 1).unwrap()).is_null());

            for size in [4096, 16 * 1024 + 5, 1 << 20] {
                let layout = Layout::from_size_align(size, 1).unwrap();
                let zeroed = allocator.alloc_zeroed(layout);
                assert_eq!(zeroed as usize % CACHE_LINE, 0, "{size} bytes");
                assert!((0..size).all(|i| *zeroed.add(i) == 0));
                allocator.dealloc(zeroed, layout);
            }
        }
    }
}
