//! A TCP forwarder from the loopback of test namespaces to the loopback of
//! the namespace that started it: an API server listening on our
//! `127.0.0.1:PORT` becomes reachable at the same address and port from
//! inside every node of a [`crate::multinode::ClusterSandbox`], so the
//! kubeconfig (and the server certificate it names) works there unchanged.
//!
//! setns is per thread: one thread per namespace joins it and listens
//! there; the upstream connections are made by a thread that never leaves
//! the starting namespace. A server restarted on the same port is reached
//! by the next forwarded connection; the open ones close with the old
//! server, as a client sees a real server go away.
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::netns::Netns;

/// How often the accept and dial loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How long a forwarded connection waits for the upstream connect.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Open forwarded connections (both ends), shut down on drop.
type Open = Arc<Mutex<HashMap<u64, (TcpStream, TcpStream)>>>;

/// See the module documentation. Stops listening and closes every
/// forwarded connection on drop.
pub struct LoopbackForward {
    stop: Arc<AtomicBool>,
    open: Open,
    threads: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicU64>,
}

impl LoopbackForward {
    /// Listens on `127.0.0.1:port` inside each of `namespaces` and forwards
    /// every connection to `127.0.0.1:port` of the calling thread's
    /// namespace.
    pub fn start(namespaces: &[&Netns], port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let open: Open = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<TcpStream>();
        let upstream = SocketAddr::from(([127, 0, 0, 1], port));
        let mut threads = vec![{
            let (stop, open) = (stop.clone(), open.clone());
            std::thread::spawn(move || dial_loop(&rx, upstream, &stop, &open))
        }];
        let mut me = LoopbackForward {
            stop,
            open,
            threads: Vec::new(),
            accepted,
        };
        for ns in namespaces {
            threads.push(me.listen_in(ns, port, tx.clone())?);
        }
        me.threads = threads;
        Ok(me)
    }

    /// Binds the listener inside `ns` (reporting a failure to the caller)
    /// and runs its accept loop on that thread.
    fn listen_in(
        &self,
        ns: &Netns,
        port: u16,
        tx: mpsc::Sender<TcpStream>,
    ) -> Result<JoinHandle<()>> {
        let path = ns.path().to_path_buf();
        let name = ns.name().to_string();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop, accepted) = (self.stop.clone(), self.accepted.clone());
        let handle = std::thread::spawn(move || {
            let bound = join_netns(&path).and_then(|()| {
                let l = TcpListener::bind(("127.0.0.1", port))
                    .with_context(|| format!("binding 127.0.0.1:{port} in {name}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match bound {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    accept_loop(&l, &tx, &stop, &accepted);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the forwarder for {} did not start", ns.name()))??;
        Ok(handle)
    }

    /// Connections accepted so far, in every namespace.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// The current thread joins the namespace behind `path` (as
/// [`Netns::join_this_thread`] does, for a thread that has only the path).
fn join_netns(path: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setns {}", path.display()));
    }
    Ok(())
}

fn accept_loop(
    l: &TcpListener,
    tx: &mpsc::Sender<TcpStream>,
    stop: &AtomicBool,
    accepted: &AtomicU64,
) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                if s.set_nonblocking(false).is_err() || tx.send(s).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Connects each accepted stream to `upstream` and pumps bytes both ways;
/// a stream whose upstream refuses is closed at once (the client sees the
/// server gone, and retries as it would against a real one).
fn dial_loop(rx: &mpsc::Receiver<TcpStream>, upstream: SocketAddr, stop: &AtomicBool, open: &Open) {
    let mut next_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let down = match rx.recv_timeout(POLL) {
            Ok(s) => s,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let Ok(up) = TcpStream::connect_timeout(&upstream, DIAL_TIMEOUT) else {
            let _ = down.shutdown(Shutdown::Both);
            continue;
        };
        next_id += 1;
        if let Err(e) = pump(next_id, down, up, open) {
            eprintln!("bpfproxy-tests: forwarder: {e:#}");
        }
    }
}

/// Two copy threads for one connection; when either direction ends, both
/// sockets are shut down (no half-close: HTTP and TLS clients need none).
fn pump(id: u64, down: TcpStream, up: TcpStream, open: &Open) -> Result<()> {
    let clones = (down.try_clone()?, up.try_clone()?);
    let (down2, up2) = (down.try_clone()?, up.try_clone()?);
    open.lock()
        .map_err(|_| anyhow!("forwarder registry poisoned"))?
        .insert(id, clones);
    let copy = move |mut from: TcpStream, mut to: TcpStream, open: Option<Open>| {
        let _ = io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        if let Some(open) = open {
            if let Ok(mut m) = open.lock() {
                m.remove(&id);
            }
        }
    };
    let o = open.clone();
    std::thread::spawn(move || copy(down, up, Some(o)));
    std::thread::spawn(move || copy(up2, down2, None));
    Ok(())
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut m) = self.open.lock() {
            for (_, (a, b)) in m.drain() {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
