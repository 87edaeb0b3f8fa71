//! One thread that forks every child and never exits.
//!
//! Children are told to die with their parent (`setpriv --pdeathsig KILL`), and for the kernel
//! the parent is the *thread* that forked them, not the process: a child forked on a tokio
//! blocking-pool thread, or on a worker thread that `block_in_place` handed to the pool, would be
//! killed when that thread idles out, in the middle of a build. Forking on this thread ties each
//! child to the life of the worker process and to nothing shorter.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Request {
    command: Command,
    /// The caller's runtime: the child is registered with its reactor, so it is awaited there.
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// Spawns `command` on the spawner thread, for the current tokio runtime.
pub(super) async fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    let request = Request {
        command,
        runtime: Handle::current(),
        reply,
    };
    let sent = SPAWNER
        .get_or_init(start)
        .lock()
        .map_err(|_| io::Error::other("the spawner lock is poisoned"))?
        .send(request);
    if sent.is_err() {
        return Err(io::Error::other("the spawner thread is gone"));
    }
    // A caller that gives up here drops the answer: the child is dropped with it, and killed
    // (`kill_on_drop`).
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped a request"))?
}

fn start() -> Mutex<mpsc::Sender<Request>> {
    let (tx, rx) = mpsc::channel::<Request>();
    let started = std::thread::Builder::new()
        .name("child-spawner".into())
        .spawn(move || {
            // The sender lives in a static: this loop ends only with the process.
            while let Ok(mut request) = rx.recv() {
                // Entered until the reply is sent: an unwanted child is dropped (killed) here.
                let _runtime = request.runtime.enter();
                let spawned = request.command.spawn();
                let _ = request.reply.send(spawned);
            }
        });
    if let Err(e) = started {
        // Every spawn then fails with "the spawner thread is gone", naming the command.
        tracing::error!("failed to start the child-spawner thread: {e}");
    }
    Mutex::new(tx)
}
