//! Shared by the proto crate's fuzz harness (a copy of the wire crate's: test crates cannot share files).
#![allow(dead_code)]

pub mod alloc;
