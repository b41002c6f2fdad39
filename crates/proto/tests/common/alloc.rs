//! A global allocator that passes everything to the system allocator and remembers, per
//! thread, the largest single request: the hostile-input tests assert that no input makes
//! the code under test ask for more than its configured bound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, watched.
pub struct Tracking;

thread_local! {
    /// Largest allocation (or reallocation) asked for on this thread since [`reset_peak`].
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; only a const-initialised
// thread-local without a destructor is touched, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Forgets the largest request seen so far on this thread.
pub fn reset_peak() {
    PEAK.with(|p| p.set(0));
}

/// The largest request on this thread since [`reset_peak`].
pub fn peak() -> usize {
    PEAK.with(Cell::get)
}
