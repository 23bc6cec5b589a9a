//! Newtypes for the numbers that get confused.
//!
//! An `Offset` is a position in a partition log; a `LeaderEpoch` fences stale leaders; a
//! `ProducerId`/`ProducerEpoch`/`Sequence` triple identifies an idempotent producer's batch. They are
//! all integers on the wire, and mixing them up is exactly the kind of bug the type system catches.

use std::fmt;

macro_rules! newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

newtype!(
    /// A position in one partition's log. The first record ever written is offset 0.
    Offset(i64)
);
newtype!(
    /// The epoch of a partition's leadership; bumps on every leader change.
    LeaderEpoch(i32)
);
newtype!(
    /// The version of a partition's leader-and-ISR state in the metadata: bumps on every leader or
    /// ISR change (Kafka's partition epoch), so an ISR change proposed from a stale view is refused.
    PartitionEpoch(i32)
);
newtype!(
    /// An idempotent producer's id (-1: not idempotent).
    ProducerId(i64)
);
newtype!(
    /// An idempotent producer's epoch (-1: not idempotent).
    ProducerEpoch(i16)
);
newtype!(
    /// The sequence number of a batch's first record, per producer and partition (-1: none).
    Sequence(i32)
);
newtype!(
    /// A broker's id in the cluster.
    NodeId(u64)
);
newtype!(
    /// A partition's index within its topic.
    PartitionId(u32)
);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    #[must_use]
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are. Comes into cores as an argument.
pub type TimestampMs = i64;
