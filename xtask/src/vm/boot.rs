//! Booting a kernel with virtme-ng under QEMU's software CPU and running one
//! command in it.
//!
//! The guest's root is the host's (or, for arm64, a foreign root
//! filesystem's) read-only over 9p with tmpfs overlays, and it has no
//! network device: nothing in it can reach a network.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bpfproxy_tests::interrupt;

use crate::sh;

/// Exit status reported when the hard timeout killed the VM (as timeout(1)).
pub const TIMED_OUT: i32 = 124;

/// One VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The kernel image (modules are found beside it by virtme-ng).
    pub image: PathBuf,
    pub memory: String,
    pub cpus: u32,
    /// Host directories the guest may write into a throw-away overlay.
    pub overlays: Vec<PathBuf>,
    /// Extra kernel command line.
    pub append: Option<String>,
    pub arm64: Option<Arm64>,
    /// Hard limit for the whole VM, boot and poweroff included.
    pub timeout: Duration,
}

/// The pieces of an arm64 guest: its own root filesystem (the host's
/// binaries cannot run there) and the CPU QEMU emulates.
#[derive(Debug, Clone)]
pub struct Arm64 {
    pub root: PathBuf,
    /// `cortex-a72`: much faster under TCG than `max`, whose pointer
    /// authentication emulation is slow.
    pub cpu: String,
    /// `GUEST=HOST` read-only directories (mount points must exist in root).
    pub rodirs: Vec<String>,
}

/// What the VM did.
pub struct Outcome {
    /// The command's exit status ([`TIMED_OUT`] on timeout, -1 if killed).
    pub status: i32,
    /// Everything the guest printed to stdout.
    pub stdout: String,
    pub wall: Duration,
}

/// vng's arguments to boot `vm` and run `command` (a shell line).
pub fn vng_args(vm: &Vm, command: &str) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(arm) = &vm.arm64 {
        let root = arm.root.display();
        a.extend([
            "--arch".into(),
            "arm64".into(),
            "--root".into(),
            root.to_string(),
        ]);
        a.extend(["--busybox".into(), format!("{root}/bin/busybox")]);
        a.push(format!("--qemu-opts=-cpu {}", arm.cpu));
        for d in &arm.rodirs {
            a.extend(["--rodir".into(), d.clone()]);
        }
    }
    // /dev/kvm on these machines runs only paravirtual guest kernels: TCG.
    a.push("--disable-kvm".into());
    a.extend(["--run".into(), vm.image.display().to_string()]);
    a.extend([
        "--memory".into(),
        vm.memory.clone(),
        "--cpus".into(),
        vm.cpus.to_string(),
    ]);
    for d in &vm.overlays {
        a.push(format!("--overlay-rwdir={}", d.display()));
    }
    if let Some(append) = &vm.append {
        a.extend(["--append".into(), append.clone()]);
    }
    a.extend(["--exec".into(), command.to_string()]);
    a
}

/// Boots `vm`, runs `command` in it and returns its exit status; the guest's
/// output is shown as it comes and kept.
pub fn run(vm: &Vm, command: &str) -> Result<Outcome> {
    let mut c = sh::cmd("vng", vng_args(vm, command));
    // Pipes, not our stdout: QEMU opens its file chardevs on /proc/self/fd/1
    // with O_TRUNC, so with stdout redirected to a file the guest's output
    // and the console would overwrite each other.
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills vng, QEMU and virtiofsd
    // alike (killing vng alone orphans QEMU).
    c.process_group(0);
    println!("$ vng {}", vng_args(vm, command).join(" "));
    let start = Instant::now();
    let mut child = c
        .spawn()
        .context("cannot start vng (run `cargo xtask setup --vm`)")?;
    let out = copy(child.stdout.take(), std::io::stdout(), true);
    let err = copy(child.stderr.take(), std::io::stderr(), false);
    interrupt::install()?;
    let status = wait(&mut child, vm.timeout)?;
    let stdout = out.join().unwrap_or_default();
    let _ = err.join();
    let wall = start.elapsed();
    eprintln!("vm: {} status={status} wall={wall:.1?}", vm.image.display());
    Ok(Outcome {
        status,
        stdout,
        wall,
    })
}

/// Waits for `child` up to `timeout` (or Ctrl-C), then kills its group.
fn wait(child: &mut Child, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline || interrupt::requested() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("vm: timed out after {timeout:?} (or interrupted): killing its process group");
    let group = format!("-{}", child.id());
    let _ = sh::probe(&mut sh::cmd("kill", ["-s", "TERM", "--", &group]));
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = sh::probe(&mut sh::cmd("kill", ["-s", "KILL", "--", &group]));
    let _ = child.wait();
    Ok(TIMED_OUT)
}

/// Copies `from` to `to` as it comes, on a thread; keeps the text if `keep`.
fn copy(
    from: Option<impl Read + Send + 'static>,
    mut to: impl Write + Send + 'static,
    keep: bool,
) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut from) = from else {
            return String::new();
        };
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            let _ = to.write_all(chunk).and_then(|()| to.flush());
            if keep {
                kept.extend_from_slice(chunk);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        Vm {
            image: "/k/root/boot/vmlinuz-6.1".into(),
            memory: "2G".into(),
            cpus: 2,
            overlays: vec!["/work/x".into()],
            append: None,
            arm64: None,
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn amd64_command_line() {
        let a = vng_args(&vm(), "uname -r");
        assert_eq!(
            a,
            [
                "--disable-kvm",
                "--run",
                "/k/root/boot/vmlinuz-6.1",
                "--memory",
                "2G",
                "--cpus",
                "2",
                "--overlay-rwdir=/work/x",
                "--exec",
                "uname -r"
            ]
        );
    }

    #[test]
    fn arm64_command_line() {
        let mut v = vm();
        v.overlays.clear();
        v.arm64 = Some(Arm64 {
            root: "/r".into(),
            cpu: "cortex-a72".into(),
            rodirs: vec!["/project=/work/t".into()],
        });
        let a = vng_args(&v, "true").join(" ");
        assert!(
            a.starts_with("--arch arm64 --root /r --busybox /r/bin/busybox --qemu-opts=-cpu cortex-a72 --rodir /project=/work/t --disable-kvm"),
            "{a}"
        );
        assert!(a.ends_with("--exec true"), "{a}");
    }
}
