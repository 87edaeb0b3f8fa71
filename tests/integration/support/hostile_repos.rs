//! Repositories that are small in git and huge (or incompressible) once fetched or checked out,
//! written with git2 straight into the test git server's root, and a TCP relay in front of that
//! server that can go silent or slow, like a hostile git host.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use git2::{Oid, Repository, Signature};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FILE: i32 = 0o100_644;
const DIR: i32 = 0o040_000;

/// A git bomb: one `blob_mib` MiB blob listed `fanout` times per tree, `levels` trees deep
/// (`blob_mib * fanout^levels` MiB once checked out), next to a Dockerfile.
pub fn git_bomb(root: &Path, repo: &str, blob_mib: usize, fanout: usize, levels: usize) {
    let git = bare(root, repo);
    let blob = git.blob(&pseudo_random(blob_mib << 20)).expect("blob");
    let mut tree = repeat(&git, blob, FILE, fanout);
    for _ in 1..levels {
        tree = repeat(&git, tree, DIR, fanout);
    }
    commit_with_dockerfile(&git, &[("bomb", tree, DIR)]);
}

/// One file of `mib` MiB of zeros (a few kilobytes in git).
pub fn zeros(root: &Path, repo: &str, mib: usize) {
    let git = bare(root, repo);
    let blob = git.blob(&vec![0; mib << 20]).expect("blob");
    commit_with_dockerfile(&git, &[("zeros.bin", blob, FILE)]);
}

/// One file of `mib` MiB that does not compress: a fetch receives all of it.
pub fn incompressible(root: &Path, repo: &str, mib: usize) {
    let git = bare(root, repo);
    let blob = git.blob(&pseudo_random(mib << 20)).expect("blob");
    commit_with_dockerfile(&git, &[("random.bin", blob, FILE)]);
}

/// SHA-256 in counter mode: as incompressible as random bytes, with no extra crate.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u64 = 0;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(counter.to_le_bytes()));
        counter += 1;
    }
    out.truncate(len);
    out
}

fn bare(root: &Path, repo: &str) -> Repository {
    let git = Repository::init_bare(root.join(format!("{repo}.git"))).expect("bare repo");
    git.set_head("refs/heads/main").expect("HEAD");
    git
}

fn repeat(git: &Repository, child: Oid, mode: i32, times: usize) -> Oid {
    let mut tree = git.treebuilder(None).expect("treebuilder");
    for i in 0..times {
        tree.insert(format!("e{i}"), child, mode).expect("insert");
    }
    tree.write().expect("tree")
}

fn commit_with_dockerfile(git: &Repository, entries: &[(&str, Oid, i32)]) {
    let dockerfile = git
        .blob(b"FROM localhost/busybox:latest\nCOPY . /app\n")
        .expect("blob");
    let mut tree = git.treebuilder(None).expect("treebuilder");
    tree.insert("Dockerfile", dockerfile, FILE).expect("insert");
    for (name, id, mode) in entries {
        tree.insert(name, *id, *mode).expect("insert");
    }
    let tree = git
        .find_tree(tree.write().expect("tree"))
        .expect("find tree");
    let who = Signature::now("test", "test@example.invalid").expect("signature");
    git.commit(Some("refs/heads/main"), &who, &who, "hostile", &tree, &[])
        .expect("commit");
}

/// How the relay treats the connections it accepts from now on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relayed as is.
    Pass,
    /// Accepted, then never answered.
    Silent,
    /// Answers trickle back at about 50 KiB/s: slow, but never stalled.
    Slow,
}

/// A TCP relay on 127.0.0.1 in front of a git server; each connection keeps the mode it was
/// accepted in. Stops with the test's runtime.
pub struct Relay {
    pub base_url: String,
    mode: Arc<Mutex<Mode>>,
}

impl Relay {
    /// Relays to `target` (a base URL "http://host:port").
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let target = target.trim_start_matches("http://").to_owned();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let current = mode.clone();
        tokio::spawn(async move {
            let mut silent = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let mode = *current.lock().expect("mode");
                if mode == Mode::Silent {
                    silent.push(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        pass(client, server, mode == Mode::Slow).await;
                    }
                });
            }
        });
        Self {
            base_url: format!("http://{addr}"),
            mode,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }
}

async fn pass(client: TcpStream, server: TcpStream, slow: bool) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let n = match server_read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_write.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    upstream.abort();
}
