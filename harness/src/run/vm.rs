//! One QEMU virtual machine: command line, private directory, accelerator choice, lifetime.
//!
//! Every VM lives in its own private temporary directory (0700) holding its sockets: QMP, the
//! agent's virtio-serial port and, for interactive boots, a shell console. The serial console
//! (ttyS0) is QEMU's stdout and carries only the kernel log. QEMU runs in its own process
//! group (a terminal's Ctrl-C reaches us, not it), dies with us (`PR_SET_PDEATHSIG`), and is
//! killed when the `Vm` is dropped, so no error path leaves an orphan.
//!
//! USB: a `qemu-xhci` present at boot costs ~5 s under TCG (`quirk_usb_early_handoff`), so the
//! controller is hot-added on a PCIe root port when the first USB device is plugged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::run::pace::Pace;
use crate::run::agent_link::Agent;
use crate::run::console::{Console, LineSink};
use crate::run::qmp::{Qmp, QmpError};

/// Root ports created empty at boot for hot-plugged PCI devices (q35's pcie.0 cannot hotplug).
const ROOT_PORTS: usize = 4;
/// The root port the xHCI controller is hot-added on.
const USB_ROOT_PORT: &str = "rp0";
/// The hot-added controller's id; USB devices go on bus `xhci.0`.
pub const USB_BUS: &str = "xhci.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
    /// Probe KVM with a real short boot (once per host, cached), fall back to TCG.
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            "auto" => Ok(Accel::Auto),
            other => Err(format!("unknown accelerator {other:?} (expected kvm, tcg or auto)")),
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto => "auto",
        })
    }
}

/// What to boot and how.
/// Guest RAM. Boot work grows with it (KASAN's shadow and the page allocator's setup): 512
/// MiB took 6% fewer guest instructions to `/init` than 1 GiB (1.74 G against 1.85 G under
/// `-icount`), and every torture scenario met its expectations with it; about 370 MiB stay
/// free after boot. KASAN's quarantine (1/32 of RAM) holds 16 MiB of freed objects, far more
/// than our scenarios free between an unplug and the late access.
pub const DEFAULT_MEMORY_MIB: u32 = 512;

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub bzimage: PathBuf,
    /// initramfs archives, concatenated in order (Linux unpacks each in turn).
    pub initrds: Vec<PathBuf>,
    pub accel: Accel,
    /// Guest RAM; 512 MiB by default (see [`DEFAULT_MEMORY_MIB`]).
    pub memory_mib: u32,
    /// vCPUs; `None` picks per accelerator (see [`default_cpus`]).
    pub cpus: Option<u32>,
    /// Extra kernel command-line words.
    pub cmdline: Vec<String>,
    /// Add a virtio console for an interactive shell (`shell.sock` in the VM directory).
    pub shell: bool,
    /// Where console.log, qmp.log and qemu.log go (the results folder of a run, or the VM's
    /// private directory when `None`).
    pub log_dir: Option<PathBuf>,
    pub boot_timeout: Duration,
    /// Under TCG, `-icount shift=0`: the guest's clock advances one nanosecond per
    /// instruction, so the kernel's own timestamps count guest work whatever the host's
    /// speed or load. Slower; for measuring boot work (`bench`), not for tests.
    pub icount: bool,
}

impl VmConfig {
    pub fn new(bzimage: PathBuf, initrds: Vec<PathBuf>) -> Self {
        VmConfig {
            bzimage,
            initrds,
            accel: Accel::Auto,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: None,
            cmdline: Vec::new(),
            shell: false,
            log_dir: None,
            boot_timeout: Duration::from_secs(120),
            icount: false,
        }
    }
}

/// Kernel command line every VM gets: console on ttyS0 only, reboot (= QEMU exit with
/// `-no-reboot`) at once on panic, every KASAN report printed, init from the initramfs.
///
/// Then three cuts of boot work nothing of ours needs, measured in guest instructions from
/// kernel start to `Run /init` (`-icount`, vanilla 6.12 with KASAN and lockdep: 1.63 G
/// without them):
/// - `noreplace-smp`: a one-vCPU boot no longer rewrites every `lock` prefix in the kernel
///   text, each patch a switch to a temporary mm (-2%; locked instructions cost TCG nothing
///   more with one vCPU);
/// - `pci=nommconf`: no 256 MiB ECAM mapping, page by page; config space through ports
///   0xcf8/0xcfc reaches the 256 bytes our devices and acpiphp use (-3.7%);
/// - `pnpacpi=off`: no PnP walk of the ACPI namespace; the 8250 driver finds ttyS0 at its
///   legacy port all the same (-1.6%).
pub const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "panic=-1",
    "kasan_multi_shot",
    "rdinit=/init",
    "no_hash_pointers",
    "noreplace-smp",
    "pci=nommconf",
    "pnpacpi=off",
];

/// Ports taken in turn; none when empty (QEMU then picks a free root-hub port).
#[derive(Debug, Default)]
struct PortRotation {
    ports: Vec<String>,
    taken: usize,
}

impl PortRotation {
    fn next(&mut self) -> Option<String> {
        let port = self.ports.get(self.taken % self.ports.len().max(1))?.clone();
        self.taken += 1;
        Some(port)
    }
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    log_dir: PathBuf,
    qmp: Qmp,
    console: Console,
    agent: Agent,
    accel: Accel,
    qemu_version: String,
    usb_controller: bool,
    /// USB ports that usb-redir plugs take in turn (see [`Vm::add_usb_hubs`]).
    usb_rotation: PortRotation,
    /// Root ports (other than the xHCI's) holding a hot-plugged PCI device.
    ports_in_use: std::collections::BTreeSet<String>,
    booted_in: Duration,
    /// QEMU start to the agent's first answer (what the pace is measured from).
    agent_ready: Duration,
    pace: Pace,
}

/// Where a boot's time went, on the host's clock from QEMU's start (the console's host
/// times): what `cargo xtask bench` prints and boot-speed work is measured by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootPhases {
    /// QEMU start → the console's first line: firmware, loading and decompressing the
    /// kernel, the kernel's life before its console.
    pub first_line: Duration,
    /// QEMU start → the kernel runs `/init`; `None` when the console never said so.
    pub init: Option<Duration>,
    /// The kernel's own timestamp of that line: kernel time from its start to `/init`.
    pub init_kernel_time: Option<Duration>,
    /// QEMU start → the agent's first answer.
    pub agent: Duration,
}

/// The line the kernel prints as it starts the init process.
const RUN_INIT: &str = "Run /init as init process";

impl BootPhases {
    /// From a boot's first console lines (a `Vm`'s ring holds them) and its agent-ready time.
    pub fn from_lines(lines: &[crate::run::console::ConsoleLine], agent: Duration) -> Option<BootPhases> {
        let first = lines.first()?;
        let init_line = lines.iter().find(|l| l.text.contains(RUN_INIT));
        Some(BootPhases {
            first_line: first.host_time,
            init: init_line.map(|l| l.host_time),
            init_kernel_time: init_line.and_then(|l| printk_time(&l.text)),
            agent,
        })
    }
}

/// The printk timestamp at the start of a kernel log line: `[    7.301234]` → 7.301234 s.
fn printk_time(text: &str) -> Option<Duration> {
    let rest = text.trim_start().strip_prefix('[')?;
    let (secs, _) = rest.split_once(']')?;
    Duration::try_from_secs_f64(secs.trim().parse().ok()?).ok()
}

impl Vm {
    /// Starts QEMU and waits until the guest agent answers. `sinks` see every console line.
    pub async fn boot(config: &VmConfig, sinks: Vec<Box<dyn LineSink>>) -> Result<Vm> {
        // May run apt-get: not on the runtime's workers (xtask checks before the runtime starts).
        tokio::task::spawn_blocking(|| crate::host::ensure(crate::host::QEMU)).await??;
        let start = Instant::now();
        let accel = match config.accel {
            Accel::Auto => probe_accel(&config.bzimage).await?,
            other => other,
        };
        let dir = tempfile::Builder::new().prefix("unplug-vm-").tempdir().context("creating the VM directory")?;
        let log_dir = config.log_dir.clone().unwrap_or_else(|| dir.path().to_path_buf());
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let initrd = concat_initrds(&config.initrds, dir.path())?;

        let mut cmd = qemu_command(config, accel, dir.path(), &initrd);
        let qemu_log = std::fs::File::create(log_dir.join("qemu.log"))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(qemu_log);
        tracing::info!(?cmd, "starting QEMU");
        let spawned = Instant::now();
        let mut child = spawn_guarded(cmd)?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("QEMU stdout not captured"))?;
        let console = Console::spawn(stdout, &log_dir.join("console.log"), sinks)?;

        let qmp_sock = dir.path().join("qmp.sock");
        let deadline = Instant::now() + QMP_SOCKET_WAIT;
        let qmp = loop {
            if let Err(e) = wait_for_socket(&mut child, &qmp_sock, deadline).await {
                return Err(e.context(qemu_failure_hint(&log_dir)));
            }
            match Qmp::connect(&qmp_sock, Some(&log_dir.join("qmp.log"))).await {
                // QEMU binds the socket before it listens on it: a connect in between (a
                // loaded host widens the gap) is refused. Try again while QEMU runs.
                Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                connected => break connected?,
            }
        };
        let qemu_version = qmp.version().await?;
        let agent = Agent::connect(&dir.path().join("agent.sock"), Some(&log_dir.join("agent.log")))
            .await
            .context("connecting to the agent port")?;

        let cursor = console.cursor();
        tokio::select! {
            ready = agent.wait_ready(config.boot_timeout) => {
                ready.with_context(|| format!("guest agent did not become ready ({})", qemu_failure_hint(&log_dir)))?;
            }
            lost = console.wait_until_lost(cursor) => {
                return Err(anyhow::Error::from(lost).context(format!("boot failed ({})", qemu_failure_hint(&log_dir))));
            }
        }
        let agent_ready = spawned.elapsed();
        let pace = Pace::from_boot(agent_ready);
        tracing::info!(%pace, "guest agent ready");
        let agent = agent.with_pace(pace);
        Ok(Vm {
            child,
            dir,
            log_dir,
            qmp,
            console,
            agent,
            accel,
            qemu_version,
            usb_controller: false,
            usb_rotation: PortRotation::default(),
            ports_in_use: Default::default(),
            booted_in: start.elapsed(),
            agent_ready,
            pace,
        })
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }
    pub fn console(&self) -> &Console {
        &self.console
    }
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
    /// The VM's private directory (0700): put sockets for emulated devices here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
    pub fn accel(&self) -> Accel {
        self.accel
    }
    pub fn qemu_version(&self) -> &str {
        &self.qemu_version
    }
    /// Time from `boot` to the agent answering.
    pub fn booted_in(&self) -> Duration {
        self.booted_in
    }

    /// Where this boot's time went (`None`: the console printed nothing, or the boot's lines
    /// have left the ring).
    pub fn boot_phases(&self) -> Option<BootPhases> {
        let lines = self.console.lines_since(crate::run::console::LineCursor::default());
        if lines.first().is_some_and(|l| l.index != 0) {
            return None;
        }
        BootPhases::from_lines(&lines, self.agent_ready)
    }

    /// This host's pace, measured by this boot: every deadline that waits on the guest scales
    /// with it (see [`crate::run::pace`]).
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// Whether the guest is still there to talk to: its agent answers a ping within a
    /// request's deadline, or — a guest busy printing reports through a TCG serial console is
    /// slow, not dead — its console kept moving while we waited, for at most [`BUSY_LIMIT`]
    /// (scaled). The error says which it was.
    pub async fn responsive(&self) -> Result<(), String> {
        let patience = self.pace.scale(PING_PATIENCE);
        let limit = self.pace.scale(BUSY_LIMIT);
        let started = Instant::now();
        loop {
            let cursor = self.console.cursor();
            match tokio::time::timeout(patience, self.agent.ping()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(crate::run::agent_link::AgentError::Timeout { .. })) | Err(_) => {}
                Ok(Err(e)) => return Err(e.to_string()),
            }
            if self.console.has_ended() {
                return Err("no answer to ping: the console ended (QEMU exited)".into());
            }
            if self.console.cursor() == cursor {
                return Err(format!(
                    "no answer to ping within {patience:?} and the console was silent meanwhile (pace {})",
                    self.pace
                ));
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "no answer to ping for {:?} while the console kept printing (pace {})",
                    started.elapsed(),
                    self.pace
                ));
            }
        }
    }

    /// Hot-adds the xHCI controller (once) and waits until the guest's driver has bound it,
    /// so USB devices can be plugged on [`USB_BUS`].
    pub async fn ensure_usb_controller(&mut self) -> Result<()> {
        if self.usb_controller {
            return Ok(());
        }
        let cursor = self.console.cursor();
        self.qmp
            .device_add("qemu-xhci", "xhci", Some(USB_ROOT_PORT), &[("p2", 8.into()), ("p3", 8.into())])
            .await
            .context("hot-adding the xHCI controller")?;
        // Root hubs register once xhci_hcd has probed; both (USB2 and USB3) appear.
        self.console
            .wait_for(cursor, "hub 2-0:1.0: USB hub found", self.pace.scale(Duration::from_secs(60)))
            .await
            .context("xHCI controller did not come up in the guest")?;
        self.usb_controller = true;
        Ok(())
    }

    /// Hot-adds `count` USB hubs on root-hub ports 1..=count and makes later usb-redir plugs
    /// take the hubs' first ports in turn. Call it once, before any USB plug: a device QEMU
    /// put on one of those ports first makes the hub's `device_add` fail.
    ///
    /// Why: the kernel handles a hub's port changes in one work item per hub, so a device's
    /// teardown blocks the next plug on the same hub. hid-cp2112's teardown waits in
    /// `i2c_del_adapter()` for the adapter's release, which `CONFIG_DEBUG_KOBJECT_RELEASE`
    /// delays by 1-4 s; on another hub the next device is enumerated meanwhile.
    pub async fn add_usb_hubs(&mut self, count: usize) -> Result<()> {
        self.ensure_usb_controller().await?;
        for port in 1..=count {
            let cursor = self.console.cursor();
            let id = format!("hub{port}");
            self.qmp
                .device_add("usb-hub", &id, Some(USB_BUS), &[("port", port.to_string().into())])
                .await
                .with_context(|| format!("hot-adding USB hub {id} on port {port}"))?;
            // `hub B-P:1.0: USB hub found`, on whichever bus number the guest gave the root hub.
            let found = format!("-{port}:1.0: USB hub found");
            self.console
                .wait_until(cursor, "the hub's enumeration", self.pace.scale(Duration::from_secs(30)), |l| l.contains(&found))
                .await
                .with_context(|| format!("USB hub {id} did not come up in the guest"))?;
            self.usb_rotation.ports.push(format!("{port}.1"));
        }
        Ok(())
    }

    /// The USB port the next usb-redir plug takes, when [`Vm::add_usb_hubs`] set a rotation.
    pub fn next_usb_port(&mut self) -> Option<String> {
        self.usb_rotation.next()
    }

    /// Claims a free root port for a hot-plugged PCI device (`vhost-user-i2c-pci`), or `None`
    /// when all [`ROOT_PORTS`] but the xHCI's are taken.
    pub fn claim_root_port(&mut self) -> Option<String> {
        let port = (1..ROOT_PORTS).map(|i| format!("rp{i}")).find(|p| !self.ports_in_use.contains(p))?;
        self.ports_in_use.insert(port.clone());
        Some(port)
    }

    /// Gives a root port back once QEMU deleted its device.
    pub fn release_root_port(&mut self, port: &str) {
        self.ports_in_use.remove(port);
    }

    /// Asks the guest to power off, then waits for QEMU to exit (killing it after `timeout`).
    pub async fn shutdown(mut self, timeout: Duration) -> Result<()> {
        // Best effort: a wedged guest gets killed below anyway.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.execute(qapi::qmp::quit {})).await;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        Ok(())
    }

    /// QEMU's process id while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// True while QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// How long one ping may take on the reference machines before we look at the console.
const PING_PATIENCE: Duration = Duration::from_secs(10);
/// How long a guest may print without its agent answering before it counts as unresponsive
/// (on the reference machines): a storm of reports that long is a finding of its own.
const BUSY_LIMIT: Duration = Duration::from_secs(180);

/// One vCPU under TCG, two under KVM. With two TCG vCPUs on a loaded two-core host we saw
/// the second vCPU miss its local-APIC timer while idle, stalling boot for good ("rcu_sched
/// kthread timer wakeup didn't happen ... Possible timer handling issue on cpu=1"); one vCPU
/// has no cross-CPU timer to lose and leaves the host's other core to the emulators.
pub fn default_cpus(accel: Accel) -> u32 {
    match accel {
        Accel::Kvm => 2,
        Accel::Tcg | Accel::Auto => 1,
    }
}

fn qemu_failure_hint(log_dir: &Path) -> String {
    let stderr = std::fs::read_to_string(log_dir.join("qemu.log")).unwrap_or_default();
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
    let mut hint = format!("console: {}", log_dir.join("console.log").display());
    if !tail.is_empty() {
        hint.push_str(&format!("; QEMU said: {}", tail.join(" / ")));
    }
    hint
}

fn qemu_command(config: &VmConfig, accel: Accel, dir: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let mem = config.memory_mib;
    let mut cmdline: Vec<String> = BASE_CMDLINE.iter().map(|s| s.to_string()).collect();
    if config.shell {
        cmdline.push("unplug.shell=1".into());
    }
    cmdline.extend(config.cmdline.iter().cloned());
    let sock = |name: &str| dir.join(name).to_string_lossy().into_owned();
    // Guest RAM is a shared memfd so vhost-user backends can map it. No i8042, AHCI or ICH9
    // SMBus: nothing of ours uses them, and each was a probe (and ACPI objects) at every boot.
    cmd.args(["-machine", "q35,memory-backend=mem,i8042=off,sata=off,smbus=off", "-object"])
        .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
        .args(["-m", &format!("{mem}M"), "-smp", &config.cpus.unwrap_or_else(|| default_cpus(accel)).to_string()])
        .args(["-accel", &accel.to_string()])
        .args(if config.icount && accel == Accel::Tcg { &["-icount", "shift=0"][..] } else { &[] })
        .args(["-bios", "/usr/share/qemu/qboot.rom"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-vga", "none"])
        .arg("-kernel")
        .arg(&config.bzimage)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline.join(" ")])
        .args(["-serial", "stdio"])
        .args(["-qmp", &format!("unix:{},server=on,wait=off", sock("qmp.sock"))])
        .args(["-device", "virtio-serial-pci,id=vser"])
        .args(["-chardev", &format!("socket,id=agent,path={},server=on,wait=off", sock("agent.sock"))])
        .args(["-device", "virtserialport,bus=vser.0,chardev=agent,name=org.unplug.agent"]);
    if config.shell {
        cmd.args(["-chardev", &format!("socket,id=shell,path={},server=on,wait=off", sock("shell.sock"))])
            .args(["-device", "virtconsole,bus=vser.0,chardev=shell"]);
    }
    for i in 0..ROOT_PORTS {
        cmd.args(["-device", &format!("pcie-root-port,id=rp{i},bus=pcie.0,chassis={},slot={}", i + 1, i + 1)]);
    }
    cmd
}

/// Spawns QEMU so that it cannot outlive us: own process group, SIGKILL when our thread
/// exits, killed when the `Child` is dropped.
/// Pins QEMU to these CPUs (a comma-separated list of CPU numbers). A deliberately slowed
/// host for proving that deadlines follow the host's pace: `.ci/slow-host` pins QEMU to one
/// core and puts busy loops on it.
pub const QEMU_CPUS_ENV: &str = "UNPLUG_TORTURE_QEMU_CPUS";

/// The CPU set [`QEMU_CPUS_ENV`] asks for, if it is set.
fn qemu_cpus() -> Result<Option<nix::sched::CpuSet>> {
    let Ok(list) = std::env::var(QEMU_CPUS_ENV) else { return Ok(None) };
    let mut set = nix::sched::CpuSet::new();
    for item in list.split(',') {
        let cpu: usize = item
            .trim()
            .parse()
            .map_err(|_| anyhow!("{QEMU_CPUS_ENV}={list:?}: {item:?} is not a CPU number (want e.g. \"0\" or \"0,1\")"))?;
        set.set(cpu).map_err(|_| anyhow!("{QEMU_CPUS_ENV}={list:?}: CPU {cpu} is out of range"))?;
    }
    Ok(Some(set))
}

fn spawn_guarded(mut cmd: Command) -> Result<Child> {
    cmd.kill_on_drop(true).process_group(0);
    let cpus = qemu_cpus()?;
    // SAFETY: only async-signal-safe calls (prctl, getppid, sched_setaffinity, _exit) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // Our parent may have died before prctl took effect.
            if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
                nix::libc::_exit(1);
            }
            if let Some(cpus) = &cpus {
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus)?;
            }
            Ok(())
        });
    }
    cmd.spawn().context("starting qemu-system-x86_64")
}

/// How long QEMU gets from its start to listening on its QMP socket (before the guest runs:
/// the host's pace is not known yet).
const QMP_SOCKET_WAIT: Duration = Duration::from_secs(20);

async fn wait_for_socket(child: &mut Child, path: &Path, deadline: Instant) -> Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("QEMU exited during start-up with {status}");
        }
        if path.exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("QEMU did not create {} within {QMP_SOCKET_WAIT:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Linux unpacks concatenated newc archives in order, so extra archives (kernel modules)
/// simply follow the base image.
fn concat_initrds(parts: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    match parts {
        [] => bail!("no initramfs given"),
        [one] => Ok(one.clone()),
        many => {
            let out = dir.join("initrd.cpio");
            let mut f = std::fs::File::create(&out)?;
            for p in many {
                let mut src = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
                std::io::copy(&mut src, &mut f)?;
            }
            Ok(out)
        }
    }
}

/// The cached verdict of the KVM probe, keyed by what could change it.
#[derive(Debug, Serialize, Deserialize)]
struct AccelVerdict {
    host_key: String,
    accel: Accel,
    reason: String,
}

/// `auto`: boot the kernel under KVM with no userspace and wait for its banner. On some hosts
/// `/dev/kvm` exists but a KVM guest hangs with no output, so "the device node exists" is not
/// evidence; a banner is. The verdict is cached per host.
pub async fn probe_accel(bzimage: &Path) -> Result<Accel> {
    let cache = crate::paths::cache_dir().join("host").join("accel.json");
    let host_key = host_key();
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<AccelVerdict>(&text) {
            if v.host_key == host_key {
                return Ok(v.accel);
            }
        }
    }
    let (accel, reason) = if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        (Accel::Tcg, "/dev/kvm cannot be opened".to_string())
    } else {
        match kvm_boots(bzimage).await {
            Ok(()) => (Accel::Kvm, "a KVM guest printed its banner".to_string()),
            Err(e) => (Accel::Tcg, format!("KVM probe failed: {e:#}")),
        }
    };
    eprintln!("unplug-torture: accelerator {accel} ({reason}); cached in {}", cache.display());
    let verdict = AccelVerdict { host_key, accel, reason };
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Parallel tests may probe at once on a fresh host: never leave a half-written verdict.
    crate::judge::results::write_atomic(&cache, serde_json::to_string_pretty(&verdict)?.as_bytes())?;
    Ok(accel)
}

fn host_key() -> String {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    format!("{} {} {} | {qemu}", field(|u| u.nodename()), field(|u| u.release()), field(|u| u.version()))
}

async fn kvm_boots(bzimage: &Path) -> Result<()> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "kvm", "-m", "512M", "-bios", "/usr/share/qemu/qboot.rom"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(bzimage)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn_guarded(cmd)?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let dir = tempfile::tempdir()?;
    let console = Console::spawn(stdout, &dir.path().join("probe.log"), Vec::new())?;
    let result = console.wait_for(console.cursor(), "Linux version", Duration::from_secs(10)).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result.map(drop).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_ports_are_taken_in_turn_and_none_without_hubs() {
        let mut none = PortRotation::default();
        assert_eq!(none.next(), None);
        assert_eq!(none.next(), None);
        let mut hubs = PortRotation { ports: vec!["1.1".into(), "2.1".into(), "3.1".into()], taken: 0 };
        let taken: Vec<_> = (0..5).map(|_| hubs.next().unwrap()).collect();
        assert_eq!(taken, ["1.1", "2.1", "3.1", "1.1", "2.1"]);
    }

    /// The phases come from the console's host times and the kernel's own timestamp; lines
    /// with garbage where the timestamp goes give no kernel time, never a panic.
    #[test]
    fn boot_phases_read_the_console() {
        let line = |index: u64, ms: u64, text: &str| crate::run::console::ConsoleLine { index, host_time: Duration::from_millis(ms), text: text.into() };
        let lines = [
            line(0, 1200, "[    0.000000][    T0] Linux version 6.12.117"),
            line(1, 5100, "[    3.812345][    T1] Run /init as init process"),
        ];
        let phases = BootPhases::from_lines(&lines, Duration::from_millis(6000)).unwrap();
        assert_eq!(phases.first_line, Duration::from_millis(1200));
        assert_eq!(phases.init, Some(Duration::from_millis(5100)));
        assert_eq!(phases.init_kernel_time, Some(Duration::from_micros(3_812_345)));
        assert_eq!(phases.agent, Duration::from_millis(6000));
        assert_eq!(BootPhases::from_lines(&[], Duration::ZERO), None);
        for garbage in ["[ -1.0] Run /init as init process", "[1e999] Run /init as init process", "[ Run /init as init process", "Run /init as init process"] {
            let phases = BootPhases::from_lines(&[line(0, 1, garbage)], Duration::ZERO).unwrap();
            assert_eq!(phases.init, Some(Duration::from_millis(1)));
            assert_eq!(phases.init_kernel_time, None, "{garbage}");
        }
    }

    #[test]
    fn accel_parses_and_rejects() {
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert_eq!("auto".parse::<Accel>().unwrap(), Accel::Auto);
        assert!("xen".parse::<Accel>().unwrap_err().contains("expected kvm, tcg or auto"));
    }

    #[test]
    fn command_line_keeps_the_console_for_the_kernel_only() {
        let mut config = VmConfig::new("/k/bzImage".into(), vec!["/i/a.cpio".into()]);
        config.cmdline.push("unplug.hung_task=5".into());
        let cmd = qemu_command(&config, Accel::Tcg, Path::new("/run/vm"), Path::new("/i/a.cpio"));
        let args: Vec<String> = cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let joined = args.join(" ");
        assert!(joined.contains("-serial stdio"));
        assert!(joined.contains("-nodefaults -no-reboot"));
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("name=org.unplug.agent"));
        assert!(!joined.contains("virtconsole"), "no shell console unless asked");
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.starts_with("console=ttyS0 panic=-1 kasan_multi_shot"), "{append}");
        assert!(append.ends_with("unplug.hung_task=5"), "{append}");
        assert!(!joined.contains("qemu-xhci"), "the USB controller is hot-added, never present at boot");
        assert!(!joined.contains("-icount"), "instruction counting only when asked");
    }

    #[test]
    fn icount_is_asked_of_tcg_only() {
        let mut config = VmConfig::new("/k/bzImage".into(), vec!["/i/a.cpio".into()]);
        config.icount = true;
        let joined = |accel| {
            let cmd = qemu_command(&config, accel, Path::new("/run/vm"), Path::new("/i/a.cpio"));
            cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        };
        assert!(joined(Accel::Tcg).contains("-accel tcg -icount shift=0"));
        assert!(!joined(Accel::Kvm).contains("-icount"), "QEMU refuses -icount with KVM");
    }

    #[test]
    fn initrds_are_concatenated_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"AAA").unwrap();
        std::fs::write(&b, b"BB").unwrap();
        let out = concat_initrds(&[a.clone(), b], dir.path()).unwrap();
        assert_eq!(std::fs::read(out).unwrap(), b"AAABB");
        assert_eq!(concat_initrds(std::slice::from_ref(&a), dir.path()).unwrap(), a);
        assert!(concat_initrds(&[], dir.path()).is_err());
    }
}
