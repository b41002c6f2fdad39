//! Shared by the wire crate's hostile-input tests.
#![allow(dead_code)]

pub mod alloc;
