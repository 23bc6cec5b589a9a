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
        root().join("src/group/coordinator.rs"),
        root().join("src/group/assignor.rs"),
        root().join("src/group/records.rs"),
        root().join("src/auth/scram.rs"),
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
                // The campaign's worker threads only hand seeds to `run_seed_with` (the seed loop
                // above) and collect the outcomes: no simulation runs on them.
                let campaign_workers = file.ends_with("sim/src/campaign.rs") && code.contains("run_seed_with");
                let allowed = (word == "spawn_blocking" && file.ends_with("src/storage/file.rs"))
                    || (word.starts_with("rand::r") && file.ends_with("src/random.rs"))
                    || (word == "std::thread::spawn" && (seed_loop || campaign_workers));
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

/// Layers point down (issue 7): the storage, log, partition, metadata and group layers never reach up into
/// the server or the client. The frame codec lives in `protocol`, the wall clock in `clock`, so the
/// Raft peer transport and the server need nothing from above them. Unit tests (the `mod tests` at the
/// end of a file) may use the client's decoders to read back what they wrote.
#[test]
fn lower_layers_do_not_import_the_server_or_the_client() {
    for dir in ["src/meta", "src/partition", "src/log", "src/storage", "src/group", "src/kafka"] {
        for file in rust_files(&root().join(dir)) {
            let code = code_of(&file);
            let code = code.split("\nmod tests {").next().unwrap_or("");
            for word in ["crate::server", "crate::client", "super::super::server", "super::super::client"] {
                assert!(!code.contains(word), "{} (a lower layer) uses `{word}`", file.display());
            }
        }
    }
}

/// The server answers clients; it is not one. It used to call `client::status` for the cluster-status
/// fan-out, so a change to the client (its retries, its metadata cache) could change what a broker
/// does while it answers a request (issue 7). The fan-out now lives in `peer::status`, below both.
#[test]
fn the_server_does_not_import_the_client() {
    for file in rust_files(&root().join("src/server")) {
        let code = code_of(&file);
        let code = code.split("\nmod tests {").next().unwrap_or("");
        for word in ["crate::client", "super::client", "super::super::client", "keel::client"] {
            assert!(!code.contains(word), "{} (the server) uses `{word}`", file.display());
        }
    }
}

/// The client talks to brokers only through the protocol: what both sides must agree on (a push
/// subscription's heartbeat interval, the frame codec) lives in `protocol`, so a change to the
/// server's internals cannot change what the client does, and the client could live in a crate of
/// its own.
#[test]
fn the_client_does_not_import_the_server() {
    for file in rust_files(&root().join("src/client")) {
        let code = code_of(&file);
        let code = code.split("\nmod tests {").next().unwrap_or("");
        for word in ["crate::server", "super::server", "super::super::server", "keel::server"] {
            assert!(!code.contains(word), "{} (the client) uses `{word}`", file.display());
        }
    }
}

/// The admin listener (ADR 0027) sits with the CLI, on top: it reads the broker through
/// `server::Observer` and asks through a client. Nothing below reaches up into it, and the metrics
/// it renders are counted below it without knowing it exists.
#[test]
fn nothing_imports_the_admin_listener() {
    for file in rust_files(&root().join("src")) {
        if file.starts_with(root().join("src/admin")) || file.ends_with("src/lib.rs") {
            continue;
        }
        let code = code_of(&file);
        for word in ["crate::admin", "super::admin", "super::super::admin"] {
            assert!(!code.contains(word), "{} uses `{word}` (the admin listener is a top layer)", file.display());
        }
    }
}

/// The peer transport sits below everything that talks to peers: the metadata driver uses it for
/// Raft messages and the follower fetcher (in `partition`) will use it for replica fetches, so it
/// must not reach up into either of them, nor into the server or the client (issue 7, ADR 0010).
#[test]
fn the_peer_layer_imports_only_what_is_below_it() {
    for file in rust_files(&root().join("src/peer")) {
        let code = code_of(&file);
        for word in
            ["crate::meta", "crate::partition", "crate::server", "crate::client", "crate::log", "crate::storage"]
        {
            assert!(!code.contains(word), "{} (the peer layer) uses `{word}`", file.display());
        }
    }
}

/// Lines a function in `src/` may span, from its `fn` line to its closing brace (issue 7, item 7).
/// A longer one is split along the steps it already has, so each step has a name and a doc line.
const FUNCTION_LINES_MAX: usize = 70;

/// Functions allowed past [`FUNCTION_LINES_MAX`], each with the reason. Empty today: keep it short.
const LONG_FUNCTIONS_ALLOWED: &[(&str, &str)] = &[];

/// Removes the contents of string and character literals (keeping line breaks) and `//` comments,
/// so braces inside them do not count.
fn without_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c == '/' && chars.get(index + 1) == Some(&'/') {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
            continue;
        }
        if c == '"' {
            index += 1;
            while index < chars.len() && chars[index] != '"' {
                if chars[index] == '\\' {
                    index += 1;
                }
                if chars.get(index) == Some(&'\n') {
                    out.push('\n');
                }
                index += 1;
            }
            out.push_str("\"\"");
            index += 1;
            continue;
        }
        // A character literal ('{', '\n'); a lifetime ('a) is left alone.
        if c == '\'' && (chars.get(index + 2) == Some(&'\'') || chars.get(index + 1) == Some(&'\\')) {
            let close = (index + 1..chars.len()).find(|at| chars[*at] == '\'').unwrap_or(index);
            out.push_str("' '");
            index = close + 1;
            continue;
        }
        out.push(c);
        index += 1;
    }
    out
}

/// `(name, first line, lines)` of every function with a body in `text`.
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let code = without_literals(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let mut rest = line.trim_start();
        for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(signature) = rest.strip_prefix("fn ") else { continue };
        let name: String = signature.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let mut depth = 0usize;
        let mut opened = false;
        'lines: for (end, body_line) in lines.iter().enumerate().skip(start) {
            for c in body_line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            found.push((name.clone(), start + 1, end - start + 1));
                            break 'lines;
                        }
                    }
                    ';' if !opened => break 'lines, // a declaration without a body
                    _ => {}
                }
            }
        }
    }
    found
}

#[test]
fn the_function_length_check_measures_what_it_should() {
    let text = "fn short() {\n    let s = \"}}}\";\n    let c = '}';\n}\n\npub async fn longer<'a>(x: &'a str) {\n    if true {\n        // }\n    }\n}\nfn declared();\n";
    assert_eq!(
        function_lengths(text),
        vec![("short".to_owned(), 1, 4), ("longer".to_owned(), 6, 5)],
        "braces in strings, characters and comments do not count; lifetimes are not characters"
    );
}

#[test]
fn no_function_in_src_is_longer_than_the_budget() {
    let mut too_long = Vec::new();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(root()).unwrap().display().to_string();
        for (name, line, length) in function_lengths(&text) {
            let allowed = LONG_FUNCTIONS_ALLOWED.iter().any(|(which, _)| *which == format!("{relative}::{name}"));
            if length > FUNCTION_LINES_MAX && !allowed {
                too_long.push(format!("{relative}:{line} `{name}` spans {length} lines"));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "functions over {FUNCTION_LINES_MAX} lines (split them along their steps, or list one in \
         LONG_FUNCTIONS_ALLOWED with the reason): {too_long:#?}"
    );
}
