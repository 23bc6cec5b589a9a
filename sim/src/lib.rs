//! Keel's deterministic simulation (madsim). Scenarios land in sim/tests/.
