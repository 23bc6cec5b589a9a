//! Tidy: the architecture invariants that a grep can check (TigerBeetle's tidy.zig, rust-analyzer's
//! tidy tests). Each failure names the file and the rule.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Code only, without `//` comments, so docs may mention what the code must not use.
fn code_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sans_io_cores_do_no_io() {
    let banned = [
        "tokio",
        "std::fs",
        "std::net",
        "std::thread",
        "Instant",
        "SystemTime",
        "rand::",
        "crate::storage",
        "crate::log",
        "crate::server",
        "crate::client",
    ];
    let cores = [
        root().join("src/partition/core.rs"),
        root().join("src/partition/replica.rs"),
        root().join("src/leader_epochs.rs"),
        root().join("src/meta/state.rs"),
    ];
    for core in cores {
        let code = code_of(&core);
        for word in banned {
            assert!(!code.contains(word), "{} is a sans-IO core but mentions `{word}`", core.display());
        }
    }
}

#[test]
fn the_model_crate_is_pure() {
    for file in rust_files(&root().join("model/src")) {
        let code = code_of(&file);
        for word in ["tokio", "std::fs", "std::net", "std::thread", "Instant::now", "SystemTime"] {
            assert!(!code.contains(word), "{} is in the pure model crate but mentions `{word}`", file.display());
        }
    }
}

#[test]
fn every_select_is_biased() {
    for dir in ["src", "sim/src", "sim/tests"] {
        let dir = root().join(dir);
        if !dir.exists() {
            continue;
        }
        for file in rust_files(&dir) {
            let code = code_of(&file);
            let mut rest = code.as_str();
            while let Some(at) = rest.find("select! {") {
                let after = rest[at + "select! {".len()..].trim_start();
                assert!(after.starts_with("biased;"), "{}: a select! without `biased;`", file.display());
                rest = &rest[at + 1..];
            }
        }
    }
}

#[test]
fn no_nondeterminism_escapes_the_shell() {
    for dir in ["src", "sim/src", "model/src"] {
        let dir = root().join(dir);
        if !dir.exists() {
            continue;
        }
        for file in rust_files(&dir) {
            // madsim's own thread_rng is seeded; rand 0.8's escapes the simulation (DESIGN.md).
            let code = code_of(&file).replace("madsim::rand::thread_rng", "");
            // All other randomness goes through `src/random.rs`, the one seeded source: rand 0.9's
            // thread RNG is seeded once per OS thread, so under madsim a seed would draw from what an
            // earlier run in the same thread left behind.
            for word in ["std::thread::spawn", "rand::thread_rng", "spawn_blocking", "rand::rng(", "rand::random"] {
                // FileDisk is the one place that blocks on real files. The simulation's seed loops
                // start each madsim runtime on a fresh OS thread, outside any simulation, exactly as
                // madsim's own test harness does (thread-local RNGs and hash keys must start fresh),
                // and only when that thread goes on to build a seeded runtime.
                let seed_loop =
                    file.starts_with(root().join("sim/src")) && code.contains("Runtime::with_seed_and_config");
                let allowed = (word == "spawn_blocking" && file.ends_with("src/storage/file.rs"))
                    || (word.starts_with("rand::r") && file.ends_with("src/random.rs"))
                    || (word == "std::thread::spawn" && seed_loop);
                assert!(allowed || !code.contains(word), "{} uses `{word}`", file.display());
            }
        }
    }
}

/// Two ways a simulation stopped depending on what ran before it in the same process (so a failing
/// seed did not replay alone), both found by the Raft scenarios:
/// - `tokio::sync::watch` waiters pick one of eight shards with tokio's own RNG, which madsim does not
///   seed and which carries over between simulations; the wake-up order then differs;
/// - std `HashMap`/`HashSet` iteration order follows per-thread hash keys that any earlier map
///   creation shifts. Ordered maps (`BTreeMap`, `BTreeSet`) iterate the same way every time.
#[test]
fn no_process_history_dependent_collections_or_channels() {
    for dir in ["src", "sim/src"] {
        let dir = root().join(dir);
        if !dir.exists() {
            continue;
        }
        for file in rust_files(&dir) {
            let code = code_of(&file);
            for word in ["HashMap", "HashSet", "sync::watch", "watch::channel"] {
                assert!(!code.contains(word), "{} uses `{word}`", file.display());
            }
        }
    }
}

/// `keel cluster up` stopped its nodes with `std::thread::sleep` polls inside async code (blocking a
/// runtime thread) and by running the `kill` command (issue 7). Child processes go through
/// `src/process.rs` (tokio children, signals through rustix), and the real-process tests wait on
/// conditions, so neither a thread sleep nor a `kill` command belongs in them.
#[test]
fn no_thread_sleeps_or_kill_commands() {
    let mut files = rust_files(&root().join("src"));
    files.push(root().join("tests/broker_process.rs"));
    files.push(root().join("tests/cluster_process.rs"));
    for file in files {
        let code = code_of(&file);
        for word in ["thread::sleep", "Command::new(\"kill\")"] {
            assert!(!code.contains(word), "{} uses `{word}`", file.display());
        }
    }
}

/// Layers point down (issue 7): the storage, log, partition and metadata layers never reach up into
/// the server or the client. The frame codec lives in `protocol`, the wall clock in `clock`, so the
/// Raft peer transport and the server need nothing from above them. Unit tests (the `mod tests` at the
/// end of a file) may use the client's decoders to read back what they wrote.
#[test]
fn lower_layers_do_not_import_the_server_or_the_client() {
    for dir in ["src/meta", "src/partition", "src/log", "src/storage"] {
        for file in rust_files(&root().join(dir)) {
            let code = code_of(&file);
            let code = code.split("\nmod tests {").next().unwrap_or("");
            for word in ["crate::server", "crate::client", "super::super::server", "super::super::client"] {
                assert!(!code.contains(word), "{} (a lower layer) uses `{word}`", file.display());
            }
        }
    }
}
