//! Helpers shared by integration tests (each test file that needs them declares `mod support;`).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod cli;
pub mod fake_broker;
pub mod http;
pub mod in_process;
pub mod wait;
pub mod yielding_disk;
