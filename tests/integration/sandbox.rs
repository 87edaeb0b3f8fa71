//! Hostile RUN steps against the default sandbox: the host's services, processes and
//! environment are out of reach, and going past a limit fails the build as a user fault that
//! names the limit. Every probe targets 127.0.0.1 only: inside the sandbox that is the build's
//! own loopback, and the control run (chroot + host network) shows the same probe does see the
//! host's services when they are reachable.

use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::{GitServer, RepoFixture, Stack, Worker, expect_failed, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// Ports of the services `scripts/services.sh` runs on this host (broker, its management API
/// and Erlang distribution, epmd, PostgreSQL, registry) and the API's default.
const HOST_PORTS: &str = "5672 15672 25672 4369 5432 5000 8080";

/// A RUN step that fails naming what it could reach: a host port that does not refuse the
/// connection (anything but "refused" counts as reached, so the probe fails closed), more than
/// a handful of processes (the host has a hundred or more), or the worker's environment marker in any process it can see.
fn probe_dockerfile(marker: &str) -> String {
    format!(
        "FROM localhost/busybox:latest\n\
         ARG RUN_ID\n\
         RUN for p in {HOST_PORTS}; do \
               busybox timeout 3 busybox nc 127.0.0.1 $p </dev/null >/dev/null 2>/tmp/nc; \
               if ! grep -q 'Connection refused' /tmp/nc; then echo \"REACHED port $p\"; exit 1; fi; \
             done; \
             n=$(ls /proc | grep -c '^[0-9]'); echo \"processes: $n\"; \
             if [ \"$n\" -gt 20 ]; then echo \"REACHED $n processes\"; exit 1; fi; \
             if cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -q {marker}; then \
               echo 'REACHED the worker environment'; exit 1; fi; \
             echo 'probe: nothing of the host reached'\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn run_steps_reach_nothing_of_the_host() {
    let git = GitServer::start().await;
    let marker = unique("ibmarker").replace('-', "");
    let repo = RepoFixture::create(git.root.path(), "acme/probe");
    repo.commit(&[("Dockerfile", &probe_dockerfile(&marker))], "probe");
    repo.push();
    let mut stack = Stack::new().await;
    let user = unique("u");
    let env = [
        ("IB_TEST_WORKER_MARKER", marker.as_str()),
        ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
    ];

    let worker = Worker::spawn(&stack, &git, &env).await;
    stack
        .publish_json(&json!({"id": "boxed", "repo": "acme/probe", "user_id": user, "build_args": {"RUN_ID": "boxed"}}))
        .await;
    match stack.outcome("boxed", BUILD_TIMEOUT).await {
        Event::ImageUpdated(_) => {}
        other => panic!("the probe reached the host: {other:?}\n{}", worker.log()),
    }
    assert!(worker.log().contains("probe: nothing of the host reached"));
    assert!(
        !worker.log().contains("sandbox loosened"),
        "the defaults with the firewall applied loosen nothing:\n{}",
        worker.log()
    );
    worker.stop().await;

    // Control: the operator's explicit chroot + host network. The same probe sees the broker.
    let mut loose = env.to_vec();
    loose.push(("IMAGE_BUILDER__BUILD__ISOLATION", "chroot"));
    loose.push(("IMAGE_BUILDER__BUILD__NETWORK", "host"));
    let worker = Worker::spawn(&stack, &git, &loose).await;
    assert!(
        worker
            .log()
            .contains("sandbox loosened: build.isolation = \"chroot\""),
        "the loosened sandbox is warned about at start:\n{}",
        worker.log()
    );
    stack
        // A build arg of its own: podman's layer cache would otherwise reuse the boxed run.
        .publish_json(&json!({"id": "loose", "repo": "acme/probe", "user_id": user, "build_args": {"RUN_ID": "loose"}}))
        .await;
    let control = expect_failed(stack.outcome("loose", BUILD_TIMEOUT).await);
    assert!(
        control
            .log_tail
            .iter()
            .any(|l| l.contains("REACHED port 5672")),
        "without the sandbox the probe reaches the broker: {control:?}"
    );
    worker.stop().await;
    stack.cleanup().await;
}

/// One build per limit, on a worker with small limits; each fails as a user fault naming it.
#[tokio::test(flavor = "multi_thread")]
async fn going_past_a_limit_fails_the_build_naming_it() {
    let git = GitServer::start().await;
    let run = unique("run");
    let cases = [
        (
            "memory",
            "RUN dd if=/dev/zero of=/dev/null bs=300M count=1",
            "build.limits.memory_mb = 64",
        ),
        (
            "pids",
            "RUN for i in $(seq 1 100); do sleep 30 & done; wait",
            "build.limits.pids = 40",
        ),
        (
            "bigfile",
            "RUN head -c 80000000 /dev/zero > /big",
            "build.limits.disk_mb = 32",
        ),
        (
            "manyfiles",
            "RUN for i in 1 2 3 4 5 6; do head -c 15000000 /dev/zero > /f$i; done; sleep 60",
            "build.limits.disk_mb = 32",
        ),
        (
            "quickfiles",
            "RUN for i in 1 2 3 4 5 6; do head -c 15000000 /dev/zero > /f$i; done",
            "build.limits.disk_mb = 32",
        ),
    ];
    for (name, _, _) in &cases {
        let repo = RepoFixture::create(git.root.path(), &format!("acme/{name}"));
        let step = cases
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, step, _)| *step)
            .expect("case");
        repo.commit(
            &[(
                "Dockerfile",
                // A step of its own first: podman's layer cache must not answer from an
                // earlier run of this test.
                &format!("FROM localhost/busybox:latest\nRUN echo {run}\n{step}\n"),
            )],
            name,
        );
        repo.push();
    }
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__LIMITS__MEMORY_MB", "64"),
            ("IMAGE_BUILDER__BUILD__LIMITS__PIDS", "40"),
            ("IMAGE_BUILDER__BUILD__LIMITS__DISK_MB", "32"),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
            ("IMAGE_BUILDER__AMQP__PREFETCH", "2"),
        ],
    )
    .await;
    let user = unique("u");
    for (name, _, _) in &cases {
        stack
            .publish_json(&json!({"id": name, "repo": format!("acme/{name}"), "user_id": user}))
            .await;
    }
    for (name, _, limit) in &cases {
        let outcome = match stack.outcome(name, BUILD_TIMEOUT).await {
            Event::Failed(failed) => failed,
            other => panic!(
                "{name}: expected build.failed, got {other:?}\n{}",
                worker.log()
            ),
        };
        assert_eq!(outcome.fault, Fault::User, "{name}: {outcome:?}");
        assert!(
            outcome.reason.contains(limit),
            "{name}: the reason names {limit}: {outcome:?}\n{}",
            worker.log()
        );
    }
    // The worker carries on: a plain build after all of that succeeds.
    let repo = RepoFixture::create(git.root.path(), "acme/after");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo fine > /ok\n",
        )],
        "after",
    );
    repo.push();
    stack
        .publish_json(&json!({"id": "after", "repo": "acme/after", "user_id": user}))
        .await;
    match stack.outcome("after", BUILD_TIMEOUT).await {
        Event::ImageUpdated(_) => {}
        other => panic!("the worker still builds: {other:?}\n{}", worker.log()),
    }
    worker.stop().await;
    stack.cleanup().await;
}

/// Ports of `HOST_PORTS` with a listening socket bound beyond loopback, from the kernel's
/// socket tables (`/proc/net/tcp{,6}`: local address in hex, state 0A = LISTEN).
fn exposed_listeners() -> Vec<String> {
    let ports: Vec<u16> = HOST_PORTS
        .split(' ')
        .filter_map(|p| p.parse().ok())
        .collect();
    let mut exposed = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).unwrap_or(0);
            // 0100007F is 127.0.0.1 (little-endian words); the tcp6 loopback ends in 01000000.
            let loopback = addr == "0100007F"
                || addr.ends_with("0100007F") && addr.starts_with("0000000000000000FFFF0000")
                || addr == "00000000000000000000000001000000";
            if *state == "0A" && ports.contains(&port) && !loopback {
                exposed.push(format!("{table} {addr}:{port}"));
            }
        }
    }
    exposed
}

/// Structural: the services this project starts listen on loopback only, and the firewall
/// closes the host and private ranges to the build network (checked as rules, not by sending
/// traffic to the bridge gateway or a private address).
#[test]
fn host_services_listen_on_loopback_and_the_firewall_fences_the_build_network() {
    let exposed = exposed_listeners();
    assert!(
        exposed.is_empty(),
        "listening beyond loopback (scripts/services.sh up fixes it): {exposed:?}"
    );
    let rules = std::process::Command::new("nft")
        .args(["list", "table", "inet", "image_builder_sandbox"])
        .output()
        .expect("nft runs");
    let rules = String::from_utf8_lossy(&rules.stdout);
    let settings =
        image_builder::config::Settings::for_env("local").expect("built-in local config loads");
    let subnet = settings.build.subnet.net().to_string();
    let bridge = settings.build.bridge.as_str();
    assert!(
        rules.contains(&format!("ip saddr {subnet}")) && rules.contains("hook input"),
        "input from the build network is dropped (scripts/sandbox-firewall.sh apply):\n{rules}"
    );
    assert!(
        rules.contains(&format!("iifname \"{bridge}\"")) && rules.contains("masquerade"),
        "the build bridge is fenced and its egress NATed:\n{rules}"
    );
    for closed in [
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
    ] {
        assert!(
            rules.contains(closed),
            "the build network cannot reach {closed}:\n{rules}"
        );
    }
    assert!(
        rules.contains(&format!("ip saddr {subnet} ip daddr {subnet}")),
        "builds cannot reach each other:\n{rules}"
    );
    // Bridged traffic between two builds only meets those rules with bridge netfilter on.
    let bridged =
        std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").unwrap_or_default();
    assert_eq!(bridged.trim(), "1", "bridge netfilter is on");
}

/// The bridge and subnet of the namespace test: its own, so no other test's build takes an
/// address over between a build ending and the check that its namespace is gone.
const TEST_BRIDGE: &str = "ibtest0";
const TEST_SUBNET: &str = "10.231.255.0/29";

/// The name `build_net` gives the namespace of a build holding `address`.
fn namespace_of(address: &str) -> std::path::PathBuf {
    let ip: std::net::Ipv4Addr = address.parse().expect("an IPv4 address");
    std::path::Path::new("/run/netns").join(format!("ib{:08x}", u32::from(ip)))
}

/// `isolated`: every build gets a network namespace of its own, shared by all its RUN steps,
/// with its own address on the build bridge; it is removed when the build ends. Nothing is
/// sent anywhere: the steps only read their own interface.
#[tokio::test(flavor = "multi_thread")]
async fn each_build_has_one_network_namespace_of_its_own() {
    let git = GitServer::start().await;
    let run = unique("run");
    let repo = RepoFixture::create(git.root.path(), "acme/netns");
    repo.commit(
        &[(
            "Dockerfile",
            &format!(
                "FROM localhost/busybox:latest\n\
                 ARG N\n\
                 RUN echo {run} $N; cat /sys/class/net/eth0/address > /mac; \
                     busybox ip -4 -o addr show eth0 | busybox sed 's/.*inet \\([0-9.]*\\).*/address=\\1/'; \
                     sleep 3\n\
                 RUN test \"$(cat /sys/class/net/eth0/address)\" = \"$(cat /mac)\" && echo \"one-namespace-$N\"\n"
            ),
        )],
        "netns",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__BRIDGE", TEST_BRIDGE),
            ("IMAGE_BUILDER__BUILD__SUBNET", TEST_SUBNET),
            ("IMAGE_BUILDER__AMQP__PREFETCH", "2"),
        ],
    )
    .await;
    let user = unique("u");
    for n in ["a", "b"] {
        stack
            .publish_json(&json!({"id": format!("netns-{n}"), "repo": "acme/netns", "user_id": user, "build_args": {"N": n}}))
            .await;
    }
    for n in ["a", "b"] {
        match stack.outcome(&format!("netns-{n}"), BUILD_TIMEOUT).await {
            Event::ImageUpdated(_) => {}
            other => panic!("netns-{n}: {other:?}\n{}", worker.log()),
        }
    }
    let log = worker.log();
    assert!(
        log.contains(
            "sandbox loosened: the nftables table inet image_builder_sandbox is for another bridge"
        ),
        "the firewall fences the default bridge, not this test's: the worker says so at start\n{log}"
    );
    let mut addresses: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("address=").nth(1))
        .filter_map(|a| a.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        // The step's own command line, echoed by podman, has `address=\1` in it.
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        2,
        "two builds running at once have an address each: {addresses:?}\n{log}"
    );
    for address in &addresses {
        assert!(
            address.starts_with("10.231.255."),
            "{address} is of build.subnet"
        );
    }
    for n in ["a", "b"] {
        assert!(
            log.contains(&format!("one-namespace-{n}")),
            "the second step of build {n} runs in its first step's namespace:\n{log}"
        );
    }
    // Removed when the build ends (off the build's path, so give it a moment).
    for address in &addresses {
        let netns = namespace_of(address);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while netns.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !netns.exists(),
            "{} is removed after the build",
            netns.display()
        );
    }
    worker.stop().await;
    stack.cleanup().await;
}
