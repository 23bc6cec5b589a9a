//! Simulated `MetaStore` (in progress).
