//! The metadata state machine (in progress).
