//! The shell's one source of randomness (election timeouts, tick phases, the sticky partitioner).
//!
//! In the simulation (`--cfg madsim`) every draw comes from madsim's seeded RNG, so a seed replays
//! exactly whatever ran before it in the process; in production from rand's OS-seeded thread RNG.
//! Nothing else in server or client code may draw randomness (`tests/tidy.rs` bans `rand::rng()`,
//! `rand::random*` and `thread_rng` outside this file). Sans-IO cores take randomness as arguments.
//!
//! rand 0.9's own thread RNG is not enough under madsim: it is seeded once per OS thread, so a seed
//! run after another in the same thread would draw from a state the earlier run left behind.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// One draw from the process's one source (for the rare single draws of the shell, e.g. BUGGIFY).
pub fn draw_u64() -> u64 {
    seed()
}

/// A generator seeded from the process's one source. Cheap enough for the rare draws of the shell;
/// keep it when drawing often.
pub fn rng() -> StdRng {
    StdRng::seed_from_u64(seed())
}

#[cfg(madsim)]
fn seed() -> u64 {
    madsim::rand::random::<u64>()
}

#[cfg(not(madsim))]
fn seed() -> u64 {
    rand::random::<u64>()
}
