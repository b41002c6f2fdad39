//! Shared by the proto crate's fuzz harness: the wire crate's tracking allocator, the same file
//! (test crates have no common crate of their own; a path keeps one copy).
#![allow(dead_code)]

#[path = "../../../wire/tests/common/alloc.rs"]
pub mod alloc;
