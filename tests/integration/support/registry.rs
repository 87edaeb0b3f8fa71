//! A registry of a test's own (CNCF distribution, as `docker-registry`), so a test can stop and
//! restart it without touching the shared one other tests push to.

use std::time::{Duration, Instant};

pub struct TestRegistry {
    pub addr: String,
    storage: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl TestRegistry {
    /// Picks a free port; the registry is not started yet.
    pub fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self {
            addr: format!("127.0.0.1:{port}"),
            storage: tempfile::tempdir().expect("registry storage"),
            child: None,
        }
    }

    pub async fn start(&mut self) {
        self.start_with("").await;
    }

    /// Starts it with `extra` appended to its config.yml (top-level YAML sections, such as
    /// `notifications:`).
    pub async fn start_with(&mut self, extra: &str) {
        let config = self.storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n{extra}",
                self.storage.path().join("data").display(),
                self.addr
            ),
        )
        .expect("registry config");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry starts (scripts/services.sh up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let up = reqwest::get(format!("http://{}/v2/", self.addr)).await;
            if up.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("test registry on {} did not come up", self.addr);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
