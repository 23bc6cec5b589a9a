//! `.ci/deps` decides what to install from dpkg's package status and then checks the files the build
//! loads (issue 6: a glob matched `libclang-cpp.so.14` and the script believed libclang was there).
//!
//! Every case runs the script against a fake `dpkg-query` and, for the file checks, a fake root
//! directory, so the outcome does not depend on what this machine happens to have installed: a
//! machine with every package still sees "missing" when the fake says so, and a fake root without
//! `libclang.so` fails even where the real one has it.

use std::path::Path;
use std::process::{Command, Output};

const INSTALLED: &str = "install ok installed";

/// Every package `.ci/deps` manages, in the order it lists them.
const PACKAGES: [&str; 11] = [
    "librocksdb-dev",
    "libclang-dev",
    "busybox-static",
    "libfaketime",
    "iptables",
    "fonts-dejavu-core",
    "kcat",
    "python3-venv",
    "python3-confluent-kafka",
    "chromium",
    "chromium-driver",
];

/// Every package installed.
fn all_installed() -> Vec<(&'static str, &'static str)> {
    PACKAGES.iter().map(|package| (*package, INSTALLED)).collect()
}

/// The files the script checks after installing, all present under a fake root.
fn touch_all_checked_files(root: &Path) {
    for path in [
        "/usr/lib/llvm-14/lib/libclang.so",
        "/usr/include/rocksdb/db.h",
        "/usr/lib/x86_64-linux-gnu/librocksdb.so",
        "/bin/busybox",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/sbin/iptables",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/bin/kcat",
        "/usr/lib/python3.11/ensurepip/__init__.py",
        "/usr/lib/python3/dist-packages/confluent_kafka/__init__.py",
        "/usr/bin/chromium",
        "/usr/bin/chromedriver",
    ] {
        touch(root, path);
    }
}

/// A fake `dpkg-query -W -f='${Status}' PKG` answering from `statuses` (package, status); a
/// package not listed is unknown to dpkg (exit 1, as the real one does).
fn fake_dpkg_query(dir: &Path, statuses: &[(&str, &str)]) -> std::path::PathBuf {
    let mut script = String::from("#!/usr/bin/env bash\npkg=\"${@: -1}\"\ncase \"$pkg\" in\n");
    for (package, status) in statuses {
        script.push_str(&format!("  {package}) printf '%s' '{status}' ;;\n"));
    }
    script.push_str("  *) echo \"dpkg-query: no packages found matching $pkg\" >&2; exit 1 ;;\nesac\n");
    let path = dir.join("dpkg-query");
    std::fs::write(&path, script).unwrap();
    let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    assert!(status.success());
    path
}

fn run_deps(dpkg_query: &Path, root: Option<&Path>, dry_run: bool) -> Output {
    let mut command = Command::new("bash");
    command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/deps")).env("KEEL_DEPS_DPKG_QUERY", dpkg_query);
    if let Some(root) = root {
        command.env("KEEL_DEPS_ROOT", root);
    }
    if dry_run {
        command.env("KEEL_DEPS_DRY_RUN", "1");
    }
    command.output().unwrap()
}

fn missing(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find_map(|line| line.strip_prefix("missing:")).expect("a missing: line");
    line.split_whitespace().map(str::to_owned).collect()
}

fn touch(root: &Path, path: &str) {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, b"").unwrap();
}

#[test]
fn missing_packages_come_from_dpkg_status_not_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let all = fake_dpkg_query(dir.path(), &all_installed());
    assert!(missing(&run_deps(&all, None, true)).is_empty());

    // libclang-dev unknown to dpkg: missing, whatever libclang*.so* files this machine has.
    let mut statuses = all_installed();
    statuses.retain(|(package, _)| *package != "libclang-dev");
    let no_clang = fake_dpkg_query(dir.path(), &statuses);
    assert_eq!(missing(&run_deps(&no_clang, None, true)), ["libclang-dev"]);

    // Removed but not purged, or half-installed: still missing.
    let mut statuses = all_installed();
    statuses[0].1 = "deinstall ok config-files";
    statuses[1].1 = "install ok half-configured";
    let removed = fake_dpkg_query(dir.path(), &statuses);
    assert_eq!(missing(&run_deps(&removed, None, true)), ["librocksdb-dev", "libclang-dev"]);

    // The Jepsen harness's packages (ADR 0013) are decided the same way: a /bin/busybox from another
    // package (busybox, dynamically linked) does not stand in for busybox-static.
    let jepsen_missing = fake_dpkg_query(
        dir.path(),
        &[("librocksdb-dev", INSTALLED), ("libclang-dev", INSTALLED), ("iptables", "deinstall ok config-files")],
    );
    assert_eq!(
        missing(&run_deps(&jepsen_missing, None, true)),
        [
            "busybox-static",
            "libfaketime",
            "iptables",
            "fonts-dejavu-core",
            "kcat",
            "python3-venv",
            "python3-confluent-kafka",
            "chromium",
            "chromium-driver"
        ]
    );

    // The Kafka client tests' packages (ADR 0026) are decided the same way: a half-installed kcat and
    // an unknown python3-confluent-kafka are missing, the rest is not.
    let mut statuses = all_installed();
    statuses.retain(|(package, _)| *package != "python3-confluent-kafka");
    statuses.iter_mut().find(|(package, _)| *package == "kcat").unwrap().1 = "install ok half-installed";
    let kafka_missing = fake_dpkg_query(dir.path(), &statuses);
    assert_eq!(missing(&run_deps(&kafka_missing, None, true)), ["kcat", "python3-confluent-kafka"]);

    // The console test's browser and driver (ADR 0027): a removed chromium-driver is missing.
    let mut statuses = all_installed();
    statuses.iter_mut().find(|(package, _)| *package == "chromium-driver").unwrap().1 = "deinstall ok config-files";
    let driver_missing = fake_dpkg_query(dir.path(), &statuses);
    assert_eq!(missing(&run_deps(&driver_missing, None, true)), ["chromium-driver"]);
}

#[test]
fn the_files_the_build_loads_are_checked_and_a_missing_one_names_its_package() {
    let dir = tempfile::tempdir().unwrap();
    let all = fake_dpkg_query(dir.path(), &all_installed());

    // The machine of issue 6: libclang-cpp.so.14 present, libclang.so absent.
    let root = tempfile::tempdir().unwrap();
    touch_all_checked_files(root.path());
    std::fs::remove_file(root.path().join("usr/lib/llvm-14/lib/libclang.so")).unwrap();
    touch(root.path(), "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    let output = run_deps(&all, Some(root.path()), false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("libclang.so") && stderr.contains("libclang-dev"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // With the file bindgen loads, the check passes.
    touch(root.path(), "/usr/lib/llvm-14/lib/libclang.so");
    let output = run_deps(&all, Some(root.path()), false);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // RocksDB headers missing: named, with their package.
    std::fs::remove_file(root.path().join("usr/include/rocksdb/db.h")).unwrap();
    let output = run_deps(&all, Some(root.path()), false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RocksDB headers") && stderr.contains("librocksdb-dev"), "{stderr}");

    touch(root.path(), "/usr/include/rocksdb/db.h");

    // libfaketime's preload library missing (the Jepsen clock nemesis needs it): named, with its package.
    std::fs::remove_file(root.path().join("usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")).unwrap();
    let output = run_deps(&all, Some(root.path()), false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("libfaketime.so.1") && stderr.contains("libfaketime"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    touch(root.path(), "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");

    // Debian's confluent_kafka module missing (the old-librdkafka client tests need it): named, with
    // its package, on one line.
    let module = "usr/lib/python3/dist-packages/confluent_kafka/__init__.py";
    std::fs::remove_file(root.path().join(module)).unwrap();
    let output = run_deps(&all, Some(root.path()), false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("confluent_kafka") && stderr.contains("python3-confluent-kafka"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    touch(root.path(), module);
    let output = run_deps(&all, Some(root.path()), false);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // An empty root: the first missing file stops the script.
    let empty = tempfile::tempdir().unwrap();
    let output = run_deps(&all, Some(empty.path()), false);
    assert_eq!(output.status.code(), Some(1));
}
