//! RocksDB-backed `MetaStore` (in progress).
