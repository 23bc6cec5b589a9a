//! The process's allocator: the system's, except that a single allocation of at least
//! [`RESERVE_BYTES_MIN`] is an anonymous mapping made with `MAP_NORESERVE`, so it only reserves
//! address space and its pages are committed when first touched.
//!
//! Why: the `kafka-protocol` crate sizes a decoded array with `Vec::with_capacity(n)` for the
//! length `n` it read off the wire, before decoding an element (upstream's open pull requests 152,
//! 161 and 200). Eight bytes of a hostile or corrupt Kafka frame can declare two billion elements:
//! tens of gigabytes asked for at once, which the system allocator refuses, and a refused allocation
//! aborts the process. Reserved this way instead, the request succeeds without committing memory,
//! the decoder fails at the first missing element, and the mapping is returned: the connection is
//! closed and the broker stays up (tests/decode_fuzz.rs runs the decoder under this allocator).
//! Under Linux's strict overcommit mode (`vm.overcommit_memory = 2`) `MAP_NORESERVE` is ignored and
//! such a frame still aborts the broker.
//!
//! Installed by the `keel` binary and by the tests that decode untrusted Kafka frames
//! (`#[global_allocator] static ALLOC: ReservingAlloc = ReservingAlloc;`).

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations this large or larger are reserved mappings (1 GiB: nothing Keel allocates on
/// purpose comes near it; batches are at most 8 MiB and frames 64 MiB).
pub const RESERVE_BYTES_MIN: usize = 1 << 30;
/// Mappings are page-aligned; a larger alignment goes to the system allocator.
const MAPPING_ALIGN: usize = 4096;

pub struct ReservingAlloc;

fn reserved(layout: &Layout) -> bool {
    layout.size() >= RESERVE_BYTES_MIN && layout.align() <= MAPPING_ALIGN
}

// SAFETY: every pointer handed out is either the system allocator's (and returned to it with the
// same layout) or a fresh private anonymous mapping of `layout.size()` bytes, page-aligned (so
// aligned for any `align() <= MAPPING_ALIGN`), zero-filled, and unmapped with the same length.
unsafe impl GlobalAlloc for ReservingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserved(&layout) {
            // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
            return unsafe { System.alloc(layout) };
        }
        use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
        let flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
        // SAFETY: a new anonymous mapping at an address the kernel picks touches no existing memory.
        match unsafe { mmap_anonymous(std::ptr::null_mut(), layout.size(), ProtFlags::READ | ProtFlags::WRITE, flags) }
        {
            Ok(pointer) => pointer.cast(),
            Err(_) => std::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !reserved(&layout) {
            // SAFETY: as in `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: an anonymous mapping is zero-filled.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if !reserved(&layout) {
            // SAFETY: `pointer` came from `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(pointer, layout) };
        }
        // SAFETY: `pointer` is a mapping of `layout.size()` bytes made by `alloc`. An unmap cannot
        // fail for a whole mapping; if it did, the address space would leak, nothing worse.
        let _ = unsafe { rustix::mm::munmap(pointer.cast(), layout.size()) };
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout of `new_size` with the same alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !reserved(&layout) && !reserved(&new_layout) {
            // SAFETY: both sides are the system allocator's.
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        // SAFETY: a new block, the common prefix copied, the old block returned: each call keeps
        // `GlobalAlloc`'s contract.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(pointer, moved, layout.size().min(new_size));
                self.dealloc(pointer, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_allocation_is_reserved_and_returned_without_committing_memory() {
        let allocator = ReservingAlloc;
        // 64 GiB: more than this machine has, which the system allocator refuses.
        let layout = Layout::from_size_align(64 << 30, 8).unwrap();
        // SAFETY: the layout is non-zero; the block is written within bounds and freed once.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null(), "a reserved mapping of 64 GiB");
            block.write(7);
            block.add(layout.size() - 1).write(9);
            assert_eq!((block.read(), block.add(layout.size() - 1).read()), (7, 9));
            allocator.dealloc(block, layout);
            let small = Layout::from_size_align(64, 8).unwrap();
            let block = allocator.alloc(small);
            let grown = allocator.realloc(block, small, RESERVE_BYTES_MIN);
            assert!(!grown.is_null());
            allocator.dealloc(grown, Layout::from_size_align(RESERVE_BYTES_MIN, 8).unwrap());
        }
    }
}
