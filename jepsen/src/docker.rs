//! Docker: the image built without a registry, the run's network, broker containers and volumes, and
//! the guard that removes all of them.
//!
//! # What goes in, what comes out
//! In: the release `keel` binary, the run's id and size. Out: a [`Cluster`] of N broker containers
//! on a network of their own, each with a fixed address, a data volume and a fake-clock file the
//! clock nemesis rewrites; commands run inside their network namespaces from the host.
//!
//! # Invariants
//! - Every container, volume and network is registered in the [`Resources`] list *before* it is
//!   created, and everything on the list is removed when the guard drops (normal end, error, panic)
//!   or when a signal arrives (`main.rs`). Resources carry the label `keel-jepsen=<run id>`, so a
//!   harness killed with SIGKILL leaves things that `docker rm -f $(docker ps -aq --filter
//!   label=keel-jepsen)` finds.
//! - Nothing here touches a container the run did not create: every name is prefixed with the run's
//!   id, and traffic goes only to addresses on the run's own network.
//! - No base image is pulled: the image is the binary, the libraries `ldd` names (with the loader),
//!   libfaketime and a static busybox, packed with `docker import` (DESIGN.md, toolchain facts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::process::Command;

/// The image's repository; the tag is the invocation's id, so parallel runs never share an image.
pub const IMAGE_REPOSITORY: &str = "keel-jepsen";
/// Where the fake-clock file sits inside a container (a bind mount of a host directory).
pub const FAKETIME_DIR: &str = "/faketime";
/// The broker port inside each container.
pub const BROKER_PORT: u16 = 9400;
/// libfaketime's preload library, on the host and in the image.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Setup(String),
}

/// Runs `program args`, returns stdout; a non-zero exit is an error carrying stderr's last line.
/// Dropping the future kills the child (a signal ends the run mid-command).
pub async fn run(program: &str, args: &[&str]) -> Result<String, DockerError> {
    let command_line = || format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| DockerError::Command { command: command_line(), message: error.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("").trim().to_owned();
        return Err(DockerError::Command {
            command: command_line(),
            message: format!("{} ({message})", output.status),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub async fn docker(args: &[&str]) -> Result<String, DockerError> {
    run("docker", args).await
}

/// Whether a Docker daemon answers.
pub fn daemon_available() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Builds the image from the release binary: no base image, no registry.
pub async fn build_image(keel_binary: &Path, work_dir: &Path, image: &str) -> Result<(), DockerError> {
    let rootfs = work_dir.join("rootfs");
    let setup = |what: &str, error: std::io::Error| DockerError::Setup(format!("building the image: {what}: {error}"));
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).map_err(|e| setup("clearing the old rootfs", e))?;
    }
    for dir in ["bin", "usr/local/bin", "data", "tmp", "faketime", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(|e| setup(dir, e))?;
    }
    let copy = |from: &Path, to_inside: &str| -> Result<(), DockerError> {
        let to = rootfs.join(to_inside.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| setup("a library directory", e))?;
        }
        std::fs::copy(from, &to).map_err(|e| setup(&format!("copying {}", from.display()), e))?;
        Ok(())
    };
    if !Path::new(BUSYBOX).exists() {
        return Err(DockerError::Setup(format!("{BUSYBOX} missing: install busybox-static (bash .ci/deps)")));
    }
    if !Path::new(LIBFAKETIME).exists() {
        return Err(DockerError::Setup(format!("{LIBFAKETIME} missing: install libfaketime (bash .ci/deps)")));
    }
    copy(Path::new(BUSYBOX), "/bin/busybox")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).map_err(|e| setup("the sh link", e))?;
    copy(keel_binary, "/usr/local/bin/keel")?;
    copy(Path::new(LIBFAKETIME), LIBFAKETIME)?;
    let mut libraries = Vec::new();
    for binary in [keel_binary, Path::new(LIBFAKETIME)] {
        let listing = run("ldd", &[&binary.to_string_lossy()]).await?;
        libraries.extend(shared_libraries(&listing));
    }
    libraries.sort();
    libraries.dedup();
    for library in &libraries {
        // Copy what the link points at, under the name the loader asks for.
        let real = std::fs::canonicalize(library).map_err(|e| setup(library, e))?;
        copy(&real, library)?;
    }
    // `/etc/passwd` keeps busybox's `id` and friends quiet; the brokers run as root in their container.
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").map_err(|e| setup("/etc/passwd", e))?;
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    let script = format!("tar -C '{rootfs_arg}' -c . | docker import - {image} >/dev/null");
    run("sh", &["-c", &script]).await?;
    std::fs::remove_dir_all(&rootfs).map_err(|e| setup("removing the rootfs", e))?;
    Ok(())
}

/// The absolute paths in `ldd`'s output (libraries and the loader).
pub fn shared_libraries(ldd_output: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in ldd_output.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            paths.push(path.to_owned());
        }
    }
    paths
}

/// What the run created, to remove at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Container(String),
    Volume(String),
    Network(String),
    Image(String),
}

/// The list of what the run created, and the label every one of them carries; shared with the
/// signal handler.
#[derive(Clone)]
pub struct Resources {
    list: Arc<Mutex<Vec<Resource>>>,
    /// `keel-jepsen=<invocation id>`.
    label: String,
}

impl Resources {
    pub fn new(invocation_id: &str) -> Resources {
        Resources { list: Arc::default(), label: format!("keel-jepsen={invocation_id}") }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn add(&self, resource: Resource) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push(resource);
    }

    /// Removes everything on the list, then sweeps whatever still carries the label (a `docker run`
    /// that was in flight when a signal came may create its container after the list was walked).
    pub fn remove_all_and_sweep(&self) -> Vec<String> {
        let mut failures = self.remove_all();
        let query = |args: &[&str]| -> Vec<String> {
            std::process::Command::new("docker")
                .args(args)
                .stderr(Stdio::null())
                .output()
                .map(|output| String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let filter = format!("label={}", self.label);
        for id in query(&["ps", "-aq", "--filter", &filter]) {
            self.add(Resource::Container(id));
        }
        for name in query(&["volume", "ls", "-q", "--filter", &filter]) {
            self.add(Resource::Volume(name));
        }
        for name in query(&["network", "ls", "-q", "--filter", &filter]) {
            self.add(Resource::Network(name));
        }
        failures.extend(self.remove_all());
        failures
    }

    /// Removes everything on the list (containers, then volumes, then networks), synchronously, so
    /// it also works from `Drop` and after the runtime is gone. Returns what could not be removed.
    pub fn remove_all(&self) -> Vec<String> {
        let taken: Vec<Resource> = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failures = Vec::new();
        let mut remove = |args: &[&str]| {
            let status =
                std::process::Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::piped()).output();
            match status {
                Ok(output) if output.status.success() => {}
                Ok(output) => {
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    // Never created (the run stopped between registering and creating): nothing to do.
                    if !stderr.contains("No such") && !stderr.contains("not found") {
                        failures.push(format!("docker {}: {}", args.join(" "), stderr.trim()));
                    }
                }
                Err(error) => failures.push(format!("docker {}: {error}", args.join(" "))),
            }
        };
        let containers: Vec<&str> = taken
            .iter()
            .filter_map(|r| if let Resource::Container(name) = r { Some(name.as_str()) } else { None })
            .collect();
        if !containers.is_empty() {
            // A paused container must be unpaused before `rm -f` can kill it on some engines.
            for name in &containers {
                let _ = std::process::Command::new("docker")
                    .args(["unpause", name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().copied());
            remove(&args);
        }
        for resource in &taken {
            if let Resource::Volume(name) = resource {
                remove(&["volume", "rm", "-f", name]);
            }
        }
        for resource in &taken {
            if let Resource::Network(name) = resource {
                remove(&["network", "rm", name]);
            }
        }
        for resource in &taken {
            if let Resource::Image(name) = resource {
                remove(&["rmi", "-f", name]);
            }
        }
        failures
    }
}

/// Removes the run's Docker resources when dropped.
pub struct Guard {
    pub resources: Resources,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for failure in self.resources.remove_all_and_sweep() {
            eprintln!("jepsen: cleanup: {failure}");
        }
    }
}

/// One broker container.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: u64,
    pub name: String,
    pub ip: String,
    pub volume: String,
    /// Host directory bind-mounted at [`FAKETIME_DIR`]; its file `offset` is libfaketime's.
    pub faketime_dir: PathBuf,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("{}:{BROKER_PORT}", self.ip)
    }
}

/// The run's network and brokers.
pub struct Cluster {
    pub network: String,
    pub subnet: String,
    pub nodes: Vec<Node>,
    /// The run's certificates when the brokers speak mutual TLS (`--tls`).
    pub pki: Option<crate::pki::Pki>,
}

impl Cluster {
    /// Creates the network (trying subnets until one is free) and starts `n_nodes` brokers.
    pub async fn start(
        run_id: &str,
        n_nodes: usize,
        seed: u64,
        (out_dir, tls): (&Path, bool),
        image: &str,
        resources: &Resources,
    ) -> Result<Cluster, DockerError> {
        let network = format!("keel-jepsen-{run_id}");
        let label = resources.label().to_owned();
        resources.add(Resource::Network(network.clone()));
        let mut subnet_prefix = None;
        let mut last_error = String::new();
        // 10.213.x.0/24 .. 10.218.x.0/24: private, and rarely used by other tools. The start depends on
        // the seed and the process, so parallel runs try different subnets first.
        let start = (seed as usize).wrapping_add(std::process::id() as usize) % 1536;
        for attempt in 0..32 {
            let slot = (start + attempt * 97) % 1536;
            let prefix = format!("10.{}.{}", 213 + slot / 256, slot % 256);
            let subnet = format!("{prefix}.0/24");
            match docker(&["network", "create", "--label", &label, "--subnet", &subnet, &network]).await {
                Ok(_) => {
                    subnet_prefix = Some(prefix);
                    break;
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        let subnet_prefix =
            subnet_prefix.ok_or_else(|| DockerError::Setup(format!("no free subnet for the network: {last_error}")))?;
        let nodes: Vec<Node> = (1..=n_nodes as u64)
            .map(|id| Node {
                id,
                name: format!("keel-jepsen-{run_id}-n{id}"),
                ip: format!("{subnet_prefix}.{}", 10 + id),
                volume: format!("keel-jepsen-{run_id}-n{id}-data"),
                faketime_dir: out_dir.join("faketime").join(format!("n{id}")),
            })
            .collect();
        let peers: Vec<String> = nodes.iter().map(|node| format!("{}={}", node.id, node.addr())).collect();
        let peers = peers.join(",");
        let ips: Vec<String> = nodes.iter().map(|node| node.ip.clone()).collect();
        let pki = match tls {
            true => Some(crate::pki::make(&out_dir.join("tls"), &ips).map_err(DockerError::Setup)?),
            false => None,
        };
        // With --tls, the run's certificates (read-only) and the environment that turns TLS on.
        let mut tls_args: Vec<String> = Vec::new();
        if let Some(pki) = &pki {
            tls_args.extend(["-v".to_owned(), format!("{}:{}:ro", pki.dir.display(), crate::pki::MOUNT)]);
            for variable in crate::pki::broker_env() {
                tls_args.extend(["-e".to_owned(), variable]);
            }
        }
        for node in &nodes {
            resources.add(Resource::Volume(node.volume.clone()));
            resources.add(Resource::Container(node.name.clone()));
            std::fs::create_dir_all(&node.faketime_dir)
                .map_err(|e| DockerError::Setup(format!("{}: {e}", node.faketime_dir.display())))?;
            write_faketime(node, "+0")?;
            docker(&["volume", "create", "--label", &label, &node.volume]).await?;
            let volume_mount = format!("{}:/data", node.volume);
            let faketime_mount = format!("{}:{FAKETIME_DIR}", node.faketime_dir.display());
            let node_id = node.id.to_string();
            let listen = node.addr();
            // Every node also serves Kafka clients (ADR 0026), so the listener runs under the faults.
            let kafka_listen = format!("{}:9092", node.ip);
            let preload = format!("LD_PRELOAD={LIBFAKETIME}");
            let timestamp_file = format!("FAKETIME_TIMESTAMP_FILE={FAKETIME_DIR}/offset");
            let hostname = format!("n{}", node.id);
            let mut run: Vec<&str> = vec![
                "run",
                "-d",
                "--name",
                &node.name,
                "--label",
                &label,
                "--hostname",
                &hostname,
                "--network",
                &network,
                "--ip",
                &node.ip,
                "-v",
                &volume_mount,
                "-v",
                &faketime_mount,
                "-e",
                &preload,
                "-e",
                &timestamp_file,
                // Re-read the offset file at most once a second (FAKETIME_NO_CACHE would open it on every
                // clock read, which costs the broker more than the fault is worth). Only the wall clock is
                // faked: an NTP step moves CLOCK_REALTIME, never CLOCK_MONOTONIC.
                "-e",
                "FAKETIME_CACHE_DURATION=1",
                "-e",
                "FAKETIME_DONT_FAKE_MONOTONIC=1",
                "-e",
                "RUST_LOG=info",
                "-e",
                "NO_COLOR=1",
            ];
            run.extend(tls_args.iter().map(String::as_str));
            run.extend([
                image,
                "/usr/local/bin/keel",
                "broker",
                "--node-id",
                &node_id,
                "--listen",
                &listen,
                "--kafka-listen",
                &kafka_listen,
                "--data-dir",
                "/data",
                "--peers",
                &peers,
            ]);
            docker(&run).await?;
        }
        Ok(Cluster { network, subnet: format!("{subnet_prefix}.0/24"), nodes, pki })
    }

    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(Node::addr).collect::<Vec<_>>().join(",")
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }
}

/// Writes libfaketime's offset file (`+0`, `+12.5`, `-300`: seconds added to the wall clock).
pub fn write_faketime(node: &Node, spec: &str) -> Result<(), DockerError> {
    // Write then rename, so the broker never reads a half-written file.
    let tmp = node.faketime_dir.join("offset.tmp");
    let path = node.faketime_dir.join("offset");
    std::fs::write(&tmp, format!("{spec}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| DockerError::Setup(format!("writing {}: {e}", path.display())))
}

/// The host pid of a running container's init process (its network namespace is entered with it).
pub async fn container_pid(node: &Node) -> Result<u32, DockerError> {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &node.name]).await?;
    match pid.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(DockerError::Setup(format!("{} is not running", node.name))),
    }
}

/// Runs `iptables args` inside the node's network namespace (with the host's iptables).
pub async fn iptables(node: &Node, args: &[&str]) -> Result<(), DockerError> {
    let pid = container_pid(node).await?.to_string();
    let mut full = vec!["-t", &pid, "-n", "iptables", "-w"];
    full.extend_from_slice(args);
    run("nsenter", &full).await.map(|_| ())
}

/// Where the node's data volume lives on the host.
pub async fn volume_dir(node: &Node) -> Result<PathBuf, DockerError> {
    let path = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &node.volume]).await?;
    Ok(PathBuf::from(path.trim()))
}

/// Whether the container is running.
pub async fn is_running(node: &Node) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", &node.name]).await.is_ok_and(|out| out.trim() == "true")
}

/// The broker's log (stdout and stderr), for the report.
pub async fn logs(node: &Node) -> String {
    let output = Command::new("docker").args(["logs", &node.name]).stdin(Stdio::null()).output().await;
    match output {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            text
        }
        Err(error) => format!("(docker logs failed: {error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_libraries_and_the_loader() {
        let listing =
            "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibrocksdb.so.7.8 => /lib/x86_64-linux-gnu/librocksdb.so.7.8 (0x1)\n\
                       \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n\
                       \tlibmissing.so => not found\n";
        assert_eq!(
            shared_libraries(listing),
            [
                "/lib/x86_64-linux-gnu/librocksdb.so.7.8",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
