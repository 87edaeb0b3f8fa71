//! A `docker-registry` of the test's own, on a random 127.0.0.1 port with its own config and
//! storage, killed when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<std::process::Child>,
}

impl Registry {
    /// Writes a config with `auth(dir)` (YAML under `auth:`, indented two spaces; it may write
    /// its files into the registry's dir) and `public`, the address clients use (a proxy in
    /// front), for the upload locations the registry hands out.
    pub fn new(auth: impl FnOnce(&Path) -> String, public: &str) -> Self {
        let dir = tempfile::tempdir().expect("registry dir");
        let auth = auth(dir.path());
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  host: http://{public}\n\
                 auth:\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        Self {
            addr,
            dir,
            config,
            child: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn start(&mut self) {
        let log = std::fs::File::create(self.path("registry.log")).expect("registry log");
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Any answer (401 with auth on) means it is serving.
            if reqwest::get(format!("http://{}/v2/", self.addr))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.path("registry.log")).unwrap_or_default();
        panic!("registry on {} did not come up: {log}", self.addr);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file of `len` bytes for uploads.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}
