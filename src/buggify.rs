//! BUGGIFY points (FoundationDB's name): places in the shell where the simulation may make an
//! allowed but unusual choice (a tiny batch or fetch, a timeout that fires early, a late reply, a
//! cached connection dropped) so rare paths run on every seed that enables them.
//!
//! Simulation build only: in the normal build [`buggify`] is `false` and inlines away. In the
//! simulation each run decides whether it buggifies at all ([`enable`], drawn per seed by the
//! driver); then each point, the first time it is reached in the run, is active or not (even odds),
//! and an active point fires on a quarter of its evaluations ([`Point::one_in`]; one in twenty for an
//! early timeout, which also drops the connection and every request on it: fired on a quarter of
//! a lane's retries, it kept an idempotent producer from ever finishing a round of three batches
//! after the heal, `idempotent_swarm` seed 51903). Every draw comes from madsim's seeded
//! RNG, so a seed replays exactly. A point must only pick among behaviours the code has to handle
//! anyway: buggify never breaks a promise, it only makes the unlikely likely.

/// A BUGGIFY point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    /// The producer closes a batch after its first record.
    ShrinkBatch,
    /// A consumer or follower fetch returns at most one batch.
    ShrinkFetch,
    /// A client request times out after half of its timeout (its connection is dropped, as on any
    /// timeout).
    EarlyTimeout,
    /// A broker holds a response back for up to 200 ms.
    DelayReply,
    /// A client replaces a cached connection by a new one before a request.
    DropConnection,
}

impl Point {
    pub const ALL: [Point; 5] =
        [Point::ShrinkBatch, Point::ShrinkFetch, Point::EarlyTimeout, Point::DelayReply, Point::DropConnection];

    /// An active point fires on one evaluation in this many.
    pub fn one_in(self) -> u64 {
        match self {
            Point::EarlyTimeout => 20,
            _ => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Point::ShrinkBatch => "shrink_batch",
            Point::ShrinkFetch => "shrink_fetch",
            Point::EarlyTimeout => "early_timeout",
            Point::DelayReply => "delay_reply",
            Point::DropConnection => "drop_connection",
        }
    }
}

/// Whether `point` fires now. Always `false` outside the simulation.
#[inline]
pub fn buggify(point: Point) -> bool {
    #[cfg(madsim)]
    return sim::fire(point);
    #[cfg(not(madsim))]
    {
        let _ = point;
        false
    }
}

/// A delay for [`Point::DelayReply`] when it fires (0-200 ms, drawn), else `None`.
pub fn reply_delay() -> Option<std::time::Duration> {
    if !buggify(Point::DelayReply) {
        return None;
    }
    #[cfg(madsim)]
    return Some(std::time::Duration::from_millis(crate::random::draw_u64() % 201));
    #[cfg(not(madsim))]
    None
}

/// Turns BUGGIFY on or off for the run on this thread and forgets which points were active
/// (simulation build only; the driver calls it once per seed, before anything runs).
#[cfg(madsim)]
pub fn enable(on: bool) {
    sim::STATE.with(|state| *state.borrow_mut() = sim::State { enabled: on, ..sim::State::default() });
}

/// How often each point fired since [`enable`] (simulation build only).
#[cfg(madsim)]
pub fn fired() -> Vec<(Point, u64)> {
    sim::STATE.with(|state| {
        let state = state.borrow();
        Point::ALL.iter().map(|&point| (point, state.fired[point as usize])).collect()
    })
}

#[cfg(madsim)]
mod sim {
    use std::cell::RefCell;

    use super::Point;

    #[derive(Default)]
    pub(super) struct State {
        pub enabled: bool,
        /// Per point: not reached yet in this run, or whether it is active.
        pub active: [Option<bool>; Point::ALL.len()],
        pub fired: [u64; Point::ALL.len()],
    }

    thread_local! {
        pub(super) static STATE: RefCell<State> = RefCell::new(State::default());
    }

    pub(super) fn fire(point: Point) -> bool {
        STATE.with(|state| {
            let mut state = state.borrow_mut();
            if !state.enabled {
                return false;
            }
            let index = point as usize;
            let active = *state.active[index].get_or_insert_with(|| crate::random::draw_u64() % 2 == 0);
            let fires = active && crate::random::draw_u64() % point.one_in() == 0;
            if fires {
                state.fired[index] += 1;
            }
            fires
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_listed_in_discriminant_order_and_never_fire_outside_the_simulation() {
        for (index, point) in Point::ALL.iter().enumerate() {
            assert_eq!(*point as usize, index);
            assert!(!buggify(*point));
        }
        assert_eq!(reply_delay(), None);
    }
}
