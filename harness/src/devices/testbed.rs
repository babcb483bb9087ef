//! The devices attached to one VM, by name and id: plug, unplug, and what the guest showed.
//!
//! Scenarios and `xtask boot --with` name devices (`usb-kbd`, `cp2112`, ...); this module
//! maps a name to how it is plugged (QMP `device_add` of a QEMU model, or our emulator behind
//! `usb-redir`) and which unplug methods it supports.
//!
//! A `cp2112` comes with at24 EEPROMs behind it (by default a 24c02 at 0x50) and, once
//! hid-cp2112 has bound, the at24 clients are instantiated in the guest (`new_device`: x86
//! has no device tree to describe them), so the whole chain nvmem → at24 → regmap → I2C →
//! hid-cp2112 → HID → USB exists before the first scenario step.
//!
//! A `virtio-i2c` is our vhost-user-i2c backend ([`crate::devices::vhost_i2c`]) with the same at24
//! EEPROMs behind it, hot-plugged as QEMU's `vhost-user-i2c-pci` on a PCIe root port; the
//! guest's i2c-virtio binds and the at24 clients are instantiated the same way. It unplugs
//! `graceful` (`device_del`, ACPI hotplug in the guest), `surprise` (the backend goes away:
//! the guest's adapter stays, its requests hang; then `device_del` takes the device out) or
//! `unbind` (i2c_virtio unbound in sysfs).
//!
//! A `gpio-sim` is an in-kernel provider (configfs), plugged through the agent; its graceful
//! unplug is `live=0`. Any provider can be `unbind`-unplugged: its driver is unbound in sysfs
//! while the device stays plugged under its id, driverless, until it is bound again
//! ([`Testbed::bind`]) or really unplugged.
//!
//! After a plug the testbed knows the provider's nodes in the guest ([`GuestNodes`]), so
//! consumers can be pointed at them by kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use devices::at24::{At24, At24Kind};
use devices::cp2112::Cp2112;
use serde::Serialize;

use crate::devices::plug::Redir;
use crate::devices::providers::GpioSim;
use crate::run::qmp::QmpError;
use crate::drive::scenario::UnplugHow;
use crate::devices::vhost_i2c::VirtioI2c;
use crate::run::vm::{Vm, USB_BUS};

/// QEMU's own USB devices: the xHCI/usbhid disconnect path without any emulator of ours.
const QEMU_USB: &[&str] = &["usb-kbd", "usb-mouse", "usb-tablet"];
const CP2112: &str = "cp2112";
const GPIO_SIM: &str = "gpio-sim";
pub(crate) const VIRTIO_I2C: &str = "virtio-i2c";
/// Lines of a plugged gpio-sim chip (the CP2112 has 8 too).
const GPIO_SIM_LINES: u32 = 8;

/// How long a device plugged half-way gets to be removed again.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the guest may take to enumerate a USB device under TCG (reference machines;
/// scaled by the VM's pace, see `crate::run::pace`).
const ENUMERATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every device name `plug` accepts.
pub fn known_devices() -> Vec<&'static str> {
    let mut all = QEMU_USB.to_vec();
    all.extend([CP2112, GPIO_SIM, VIRTIO_I2C]);
    all
}

/// An EEPROM behind a CP2112: its 7-bit address and part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At24Spec {
    pub address: u8,
    pub kind: At24Kind,
}

impl std::str::FromStr for At24Spec {
    type Err = String;
    /// `0x50:24c02`
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, part) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected ADDRESS:PART, e.g. 0x50:24c02"))?;
        let address = u8::from_str_radix(addr.trim_start_matches("0x"), 16)
            .ok()
            .filter(|a| (0x08..=0x77).contains(a))
            .ok_or_else(|| format!("{addr:?}: expected a 7-bit I2C address between 0x08 and 0x77"))?;
        let kind = [At24Kind::C01, At24Kind::C02, At24Kind::C32, At24Kind::C64, At24Kind::C128, At24Kind::C256, At24Kind::C512]
            .into_iter()
            .find(|k| k.name() == part)
            .ok_or_else(|| format!("{part:?}: unknown at24 part (24c01, 24c02, 24c32, 24c64, 24c128, 24c256, 24c512)"))?;
        Ok(At24Spec { address, kind })
    }
}

/// The EEPROM a `cp2112` gets when nothing else is asked for.
pub const DEFAULT_AT24: At24Spec = At24Spec { address: 0x50, kind: At24Kind::C02 };

/// The contents every emulated EEPROM starts with: not all-0xff, so a read of the wrong
/// offset or device shows.
pub fn seed_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ 0x3c).collect()
}

/// What happened when a device was plugged or unplugged.
#[derive(Debug, Clone, Serialize)]
pub struct PlugRecord {
    pub id: String,
    pub action: String,
    pub elapsed_ms: f64,
    /// The console line (or guest state) that showed the guest reacting.
    pub guest_saw: Option<String>,
}

/// Where a plugged provider shows in the guest (what exists for its kind).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestNodes {
    /// `/dev/gpiochipN`.
    pub gpiochip: Option<String>,
    pub gpio_lines: u32,
    /// The I2C adapter number.
    pub i2c_bus: Option<u32>,
    /// nvmem device names of the at24 clients (`<bus>-00<addr>0`), with their addresses.
    pub nvmem: Vec<(u8, String)>,
    /// `/dev/hidrawN`.
    pub hidraw: Option<String>,
    /// `<bus>/drivers/<driver>/` and the device name to write to its `unbind`.
    pub driver: Option<(String, String)>,
}

enum Plugged {
    QemuUsb { driver: &'static str },
    GpioSim { sim: GpioSim, nodes: GuestNodes },
    Cp2112 {
        redir: Redir,
        device: Cp2112,
        eeproms: Vec<(At24Spec, Arc<Mutex<At24>>)>,
        /// A fault that drops the device when this transfer (absolute count) starts.
        drop_at_transfer: Option<u64>,
        nodes: GuestNodes,
    },
    VirtioI2c {
        device: VirtioI2c,
        eeproms: Vec<(At24Spec, Arc<Mutex<At24>>)>,
        nodes: GuestNodes,
    },
}

impl Plugged {
    /// The provider's guest nodes (QEMU's own devices have none tracked).
    fn nodes(&self) -> Option<&GuestNodes> {
        match self {
            Plugged::Cp2112 { nodes, .. } | Plugged::GpioSim { nodes, .. } | Plugged::VirtioI2c { nodes, .. } => Some(nodes),
            Plugged::QemuUsb { .. } => None,
        }
    }
}

/// The devices currently plugged into one VM.
#[derive(Default)]
pub struct Testbed {
    plugged: BTreeMap<String, Plugged>,
    /// Plugged devices whose driver is unbound (their guest nodes are gone).
    unbound: BTreeSet<String>,
    /// Devices whose unplug started but never finished (the step was cancelled at its
    /// deadline): QEMU and the guest may still have them, half removed. Their ids stay taken.
    interrupted: BTreeSet<String>,
    /// virtio-i2c devices QEMU may still have after a failed unplug (no `DEVICE_DELETED`):
    /// their backends keep serving until QEMU hangs up; [`Testbed::finish`] joins them.
    lingering: Vec<VirtioI2c>,
}

/// Marks an unplug in flight: unless [`InFlight::done`] is called, dropping it (the unplug's
/// future was cancelled) records the id as interrupted.
struct InFlight<'a> {
    interrupted: &'a mut BTreeSet<String>,
    id: Option<String>,
}

impl<'a> InFlight<'a> {
    fn start(interrupted: &'a mut BTreeSet<String>, id: &str) -> InFlight<'a> {
        InFlight {
            interrupted,
            id: Some(id.to_string()),
        }
    }

    fn done(mut self) {
        self.id = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.interrupted.insert(id);
        }
    }
}

impl Testbed {
    pub fn new() -> Testbed {
        Testbed::default()
    }

    /// Ids currently plugged.
    pub fn ids(&self) -> Vec<String> {
        self.plugged.keys().cloned().collect()
    }

    /// Ids whose unplug was cancelled half-way (a step deadline): neither plugged nor known
    /// to be gone.
    pub fn interrupted(&self) -> Vec<String> {
        self.interrupted.iter().cloned().collect()
    }

    fn unknown(&self, id: &str) -> anyhow::Error {
        if self.interrupted.contains(id) {
            anyhow::anyhow!("the unplug of {id:?} was cancelled half-way (step deadline); it may still be in QEMU or the guest")
        } else {
            anyhow::anyhow!(
                "no device with id {id:?} is plugged (plugged: {:?})",
                self.ids()
            )
        }
    }

    /// The emulated CP2112 plugged as `id` (host-side view: GPIO levels, faults, counters).
    pub fn cp2112(&self, id: &str) -> Option<&Cp2112> {
        match self.plugged.get(id) {
            Some(Plugged::Cp2112 { device, .. }) => Some(device),
            _ => None,
        }
    }

    /// The virtio-i2c device plugged as `id` (host-side view: its backend's counters).
    pub fn virtio_i2c(&self, id: &str) -> Option<&VirtioI2c> {
        match self.plugged.get(id) {
            Some(Plugged::VirtioI2c { device, .. }) => Some(device),
            _ => None,
        }
    }

    /// Where the provider plugged as `id` shows in the guest (`None` while its driver is
    /// unbound).
    pub fn nodes(&self, id: &str) -> Option<&GuestNodes> {
        if self.unbound.contains(id) {
            return None;
        }
        self.plugged.get(id).and_then(Plugged::nodes)
    }

    /// The EEPROM at `address` behind the CP2112 or virtio-i2c adapter `id`.
    pub fn eeprom(&self, id: &str, address: u8) -> Option<Arc<Mutex<At24>>> {
        match self.plugged.get(id) {
            Some(Plugged::Cp2112 { eeproms, .. } | Plugged::VirtioI2c { eeproms, .. }) => {
                eeproms.iter().find(|(spec, _)| spec.address == address).map(|(_, e)| e.clone())
            }
            _ => None,
        }
    }

    /// Ends the backends of lingering virtio-i2c devices (left by a stuck unplug) whose removal
    /// QEMU has completed since, and frees their root ports. An error names those whose
    /// chardev could not be removed or whose backend did not end.
    pub async fn reap_lingering(&mut self, vm: &mut Vm) -> Result<()> {
        let mut failed = Vec::new();
        for device in std::mem::take(&mut self.lingering) {
            let port = device.port().to_string();
            match device.reap(vm).await {
                Err(still_there) => self.lingering.push(still_there),
                Ok(end) => {
                    vm.release_root_port(&port);
                    if let Err(e) = end {
                        failed.push(format!("{e:#}"));
                    }
                }
            }
        }
        if !failed.is_empty() {
            bail!("late removals: {}", failed.join("; "));
        }
        Ok(())
    }

    /// Once QEMU has exited: joins the threads of every virtio-i2c backend still around
    /// (plugged, or left by a stuck unplug). An error names those that did not end.
    pub async fn finish(&mut self) -> Result<()> {
        let plugged = std::mem::take(&mut self.plugged).into_values().filter_map(|p| match p {
            Plugged::VirtioI2c { device, .. } => Some(device),
            _ => None,
        });
        let mut failed = Vec::new();
        for device in plugged.chain(std::mem::take(&mut self.lingering)) {
            if let Err(e) = device.join().await {
                failed.push(format!("{e:#}"));
            }
        }
        if !failed.is_empty() {
            bail!("vhost-user-i2c backends left running: {}", failed.join("; "));
        }
        Ok(())
    }

    /// Sets the faults of the emulated device `id` (see [`crate::drive::scenario::FaultSpec`]).
    /// Returns what was set, for the step record.
    pub fn set_faults(&mut self, fault: &crate::drive::schedule::PlannedFault) -> Result<String> {
        if let Some(Plugged::VirtioI2c { device, .. }) = self.plugged.get(&fault.id) {
            let faults = virtio_i2c_faults(fault, device.counters().transfers)?;
            device.set_faults(faults);
            return Ok(match faults.vanish_at_transfer {
                Some(n) => format!("faults set; the backend vanishes when transfer {n} starts"),
                None => "faults set".to_string(),
            });
        }
        let Some(Plugged::Cp2112 { device, drop_at_transfer, .. }) = self.plugged.get_mut(&fault.id) else {
            bail!("{:?} is not a plugged emulated device (faults exist for cp2112 and virtio-i2c)", fault.id);
        };
        let unplug_at_transfer = fault.unplug_after_transfers.map(|n| {
            let how = match fault.unplug_how {
                Some(UnplugHow::Surprise) => devices::usbredir::LinkRequest::Close,
                _ => devices::usbredir::LinkRequest::Disconnect,
            };
            (device.counters().transfers + n, how)
        });
        *drop_at_transfer = unplug_at_transfer.map(|(n, _)| n);
        device.set_faults(devices::cp2112::Faults {
            // Schedules are validated on load; a bad value still must not panic here.
            reply_delay: Duration::try_from_secs_f64(fault.reply_delay_ms / 1e3)
                .unwrap_or_default(),
            stall_ep0: fault.stall_ep0,
            transfer_error: fault.transfer_error,
            nak: fault.nak,
            busy_before_complete: fault.busy,
            unplug_at_transfer,
            corrupt_reads: 0,
        });
        Ok(match unplug_at_transfer {
            Some((n, how)) => format!("faults set; the device drops ({how:?}) when transfer {n} starts"),
            None => "faults set".to_string(),
        })
    }

    /// Plugs `device` as `id` (a `cp2112` with [`DEFAULT_AT24`]) and waits until the guest
    /// has bound a driver to it.
    pub async fn plug(&mut self, vm: &mut Vm, device: &str, id: &str) -> Result<PlugRecord> {
        self.plug_with(vm, device, id, &[DEFAULT_AT24]).await
    }

    /// Plugs `device` as `id`; a `cp2112` or `virtio-i2c` gets the EEPROMs in `at24` behind it.
    pub async fn plug_with(&mut self, vm: &mut Vm, device: &str, id: &str, at24: &[At24Spec]) -> Result<PlugRecord> {
        if self.plugged.contains_key(id) {
            bail!("a device with id {id:?} is already plugged");
        }
        if self.interrupted.contains(id) {
            bail!("the unplug of {id:?} was cancelled half-way (step deadline); QEMU may still have it, so the id is not reused");
        }
        // A stuck unplug's device QEMU has removed since gives its root port back.
        self.reap_lingering(vm).await?;
        let start = Instant::now();
        let (plugged, guest_saw) = if device == CP2112 {
            plug_cp2112(vm, id, at24).await?
        } else if device == VIRTIO_I2C {
            plug_virtio_i2c(vm, id, at24, &mut self.lingering).await?
        } else if device == GPIO_SIM {
            plug_gpio_sim(vm, id).await?
        } else if let Some(driver) = QEMU_USB.iter().copied().find(|d| *d == device) {
            (Plugged::QemuUsb { driver }, plug_qemu_usb(vm, driver, id).await?)
        } else {
            bail!("unknown device {device:?}; known devices: {}", known_devices().join(", "));
        };
        self.plugged.insert(id.to_string(), plugged);
        Ok(PlugRecord {
            id: id.to_string(),
            action: format!("plug {device}"),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            guest_saw: Some(guest_saw),
        })
    }

    /// Unplugs `id`. An unplug QEMU never completes is [`QmpError::UnplugStuck`] in the error
    /// chain, so callers can tell a stuck unplug from an infrastructure failure.
    /// `Unbind` only unbinds the driver: the device stays plugged under `id`.
    pub async fn unplug(&mut self, vm: &mut Vm, id: &str, how: UnplugHow, timeout: Duration) -> Result<PlugRecord> {
        let start = Instant::now();
        let outcome = |guest_saw: String| PlugRecord {
            id: id.to_string(),
            action: format!("unplug {id} ({})", how.name()),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            guest_saw: Some(guest_saw),
        };
        if how == UnplugHow::Unbind {
            let Some(plugged) = self.plugged.get(id) else {
                return Err(self.unknown(id));
            };
            if self.unbound.contains(id) {
                bail!("{id}'s driver is already unbound");
            }
            let Some(nodes) = plugged.nodes() else {
                bail!("unbind of {id} is not supported: no guest nodes are tracked for it");
            };
            // Even a failed, stuck or cancelled unbind may have taken the nodes away: the
            // device counts as unbound from the moment the write is attempted.
            self.unbound.insert(id.to_string());
            return unbind(vm, id, nodes).await.map(outcome);
        }
        // Whether or not the unplug completes, the device is no longer ours to plug again;
        // if this future is cancelled before the unplug ends, the id is kept as interrupted.
        let Some(plugged) = self.plugged.remove(id) else {
            return Err(self.unknown(id));
        };
        self.unbound.remove(id);
        let in_flight = InFlight::start(&mut self.interrupted, id);
        let result = unplug_plugged(vm, id, plugged, how, timeout, &mut self.lingering).await;
        in_flight.done();
        result.map(outcome)
    }

    /// Binds the driver of the unbound device `id` again and finds its new guest nodes (a
    /// CP2112's at24 clients are instantiated again: they went with the adapter).
    pub async fn bind(&mut self, vm: &mut Vm, id: &str) -> Result<PlugRecord> {
        if !self.unbound.contains(id) {
            bail!("{id:?} has no unbound driver to bind (unbound: {:?})", self.unbound);
        }
        let start = Instant::now();
        let guest_saw = match self.plugged.get_mut(id) {
            Some(Plugged::Cp2112 { nodes, eeproms, .. }) => {
                let (driver_dir, device) = nodes.driver.clone().context("no driver recorded for the CP2112")?;
                let cursor = vm.console().cursor();
                vm.agent().write_file(&format!("{driver_dir}/bind"), device.as_bytes()).await.with_context(|| format!("binding {device}"))?;
                wait_cp2112_bound(vm, id, cursor).await?;
                let specs: Vec<At24Spec> = eeproms.iter().map(|(spec, _)| *spec).collect();
                let (found, summary) = discover_cp2112(vm, &specs).await?;
                *nodes = found;
                format!("hid-cp2112 bound again; {summary}")
            }
            Some(Plugged::GpioSim { sim, nodes }) => {
                let (driver_dir, device) = nodes.driver.clone().context("no driver recorded for the gpio-sim chip")?;
                vm.agent().write_file(&format!("{driver_dir}/bind"), device.as_bytes()).await.with_context(|| format!("binding {device}"))?;
                let chip = vm.agent().read_file(&format!("{}/bank0/chip_name", sim.configfs)).await?;
                sim.dev = format!("/dev/{}", String::from_utf8_lossy(&chip).trim());
                nodes.gpiochip = Some(sim.dev.clone());
                format!("gpio-sim {device} bound again as {}", sim.dev)
            }
            _ => bail!("{id:?} cannot be bound again"),
        };
        self.unbound.remove(id);
        Ok(PlugRecord {
            id: id.to_string(),
            action: format!("bind {id}"),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            guest_saw: Some(guest_saw),
        })
    }
}

/// The removal itself (everything but `unbind`), once the device left the testbed's map.
async fn unplug_plugged(
    vm: &mut Vm,
    id: &str,
    plugged: Plugged,
    how: UnplugHow,
    timeout: Duration,
    lingering: &mut Vec<VirtioI2c>,
) -> Result<String> {
    let guest_saw = match (plugged, how) {
        (Plugged::QemuUsb { .. }, UnplugHow::Graceful) => {
            let cursor = vm.console().cursor();
            match vm.qmp().device_del(id, timeout).await {
                Err(e @ QmpError::UnplugStuck { .. }) => return Err(e.into()),
                other => other.with_context(|| format!("unplugging {id}"))?,
            };
            usb_disconnect(vm, id, cursor).await?
        }
        (Plugged::QemuUsb { driver }, how) => {
            bail!("{driver} is a QEMU device: its unplugs are graceful (device_del) and unbind, not {}", how.name())
        }
        (Plugged::GpioSim { sim, nodes }, UnplugHow::Graceful) => {
            sim.unplug(vm.agent())
                .await
                .with_context(|| format!("gpio-sim {id}: live=0"))?;
            let saw = node_gone(vm, nodes.gpiochip.as_deref().unwrap_or_default()).await?;
            // The configfs groups go too: nothing refers to them once the chip is dead.
            sim.remove(vm.agent())
                .await
                .with_context(|| format!("removing gpio-sim {id}'s configfs groups"))?;
            saw
        }
        (Plugged::GpioSim { .. }, how) => {
            bail!(
                "{id} is a gpio-sim chip: its unplugs are graceful (live=0) and unbind, not {}",
                how.name()
            )
        }
        (Plugged::VirtioI2c { device, nodes, .. }, how @ (UnplugHow::Graceful | UnplugHow::Surprise)) => {
            let adapter = format!("/sys/bus/i2c/devices/i2c-{}", nodes.i2c_bus.unwrap_or_default());
            let port = device.port().to_string();
            let surprise = if how == UnplugHow::Surprise {
                // The backend goes away; QEMU stops vhost, the guest's adapter stays.
                device.surprise();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let still = vm.agent().exec(&["test", "-e", &adapter], vm.pace().scale(ENUMERATE_TIMEOUT)).await?;
                format!("backend closed: {adapter} {}; then ", if still.success() { "stays" } else { "went away" })
            } else {
                String::new()
            };
            let end = match device.unplug(vm, timeout).await {
                Ok(end) => end,
                Err(failed) => {
                    lingering.extend(failed.device);
                    return Err(failed.error);
                }
            };
            vm.release_root_port(&port);
            format!("{surprise}device_del: DEVICE_DELETED, {}; vhost-user session: {end:?}", node_gone(vm, &adapter).await?)
        }
        (Plugged::VirtioI2c { .. }, how) => {
            bail!("{id} is a virtio-i2c adapter: its unplugs are graceful, surprise and unbind, not {}", how.name())
        }
        (
            Plugged::Cp2112 {
                redir,
                device,
                drop_at_transfer,
                ..
            },
            how,
        ) => {
            // A fault may have dropped it already: then the guest saw its disconnect then.
            let already_gone = drop_at_transfer.is_some_and(|n| device.counters().transfers >= n);
            let cursor = vm.console().cursor();
            let end = redir.unplug(vm, how, timeout).await?;
            if already_gone {
                format!("already dropped by a fault; usbredir link: {end:?}")
            } else {
                format!(
                    "{}; usbredir link: {end:?}",
                    usb_disconnect(vm, id, cursor).await?
                )
            }
        }
    };
    Ok(guest_saw)
}

/// The guest's "USB disconnect" line after `cursor`.
async fn usb_disconnect(vm: &Vm, id: &str, cursor: crate::run::console::LineCursor) -> Result<String> {
    let line = vm
        .console()
        .wait_for(cursor, "USB disconnect", vm.pace().scale(ENUMERATE_TIMEOUT))
        .await
        .with_context(|| format!("{id} was removed but the guest never reported a USB disconnect"))?;
    Ok(line.text)
}

/// Unbinds the provider's driver in sysfs; says what went away in the guest.
async fn unbind(vm: &Vm, id: &str, nodes: &GuestNodes) -> Result<String> {
    let Some((driver_dir, device)) = &nodes.driver else {
        bail!("{id}: the guest showed no driver to unbind");
    };
    vm.agent()
        .write_file(&format!("{driver_dir}/unbind"), device.as_bytes())
        .await
        .with_context(|| format!("{id}: writing {device} to {driver_dir}/unbind"))?;
    match nodes.gpiochip.as_deref() {
        Some(chip) => node_gone(vm, chip).await,
        None => Ok(format!("{device} unbound from {driver_dir}")),
    }
}

/// Waits until `path` no longer exists in the guest (devtmpfs removes a node with its device).
async fn node_gone(vm: &Vm, path: &str) -> Result<String> {
    let script = format!("{}\n[ ! -e '{path}' ]", wait_in_shell(&format!("[ ! -e '{path}' ]")));
    let out = vm.agent().exec(&["sh", "-c", &script], vm.pace().scale(ENUMERATE_TIMEOUT)).await?;
    if !out.success() {
        bail!("{path} is still there 10 s after the unplug");
    }
    Ok(format!("{path} removed"))
}

async fn plug_gpio_sim(vm: &mut Vm, id: &str) -> Result<(Plugged, String)> {
    let sim = GpioSim::create(vm.agent(), id, GPIO_SIM_LINES, &[])
        .await
        .with_context(|| format!("creating gpio-sim chip {id} through configfs"))?;
    let nodes = GuestNodes {
        gpiochip: Some(sim.dev.clone()),
        gpio_lines: GPIO_SIM_LINES,
        driver: Some(("/sys/bus/platform/drivers/gpio-sim".to_string(), sim.platform.clone())),
        ..GuestNodes::default()
    };
    let saw = format!("gpio-sim {} live as {}", sim.platform, sim.dev);
    Ok((Plugged::GpioSim { sim, nodes }, saw))
}

async fn plug_qemu_usb(vm: &mut Vm, driver: &str, id: &str) -> Result<String> {
    vm.ensure_usb_controller().await?;
    let cursor = vm.console().cursor();
    vm.qmp().device_add(driver, id, Some(USB_BUS), &[]).await.with_context(|| format!("plugging {driver}"))?;
    // QEMU's USB devices are HID devices of vendor 0627. The HID core prints one
    // "<driver> 0003:0627:PPPP.NNNN: ... USB HID vX.YY ... [QEMU ...]" line when a driver
    // has bound (hid_connect); earlier lines with the same id (input:) come before binding.
    let line = vm
        .console()
        .wait_until(cursor, "the HID bind of a QEMU USB device", vm.pace().scale(ENUMERATE_TIMEOUT), |l| {
            l.contains("0003:0627:") && l.contains(" USB HID v")
        })
        .await
        .with_context(|| format!("the guest did not enumerate {driver} ({id})"))?;
    Ok(line.text)
}

async fn plug_cp2112(vm: &mut Vm, id: &str, at24: &[At24Spec]) -> Result<(Plugged, String)> {
    let device = Cp2112::new();
    let mut eeproms = Vec::new();
    for spec in at24 {
        let eeprom = Arc::new(Mutex::new(At24::seeded(spec.kind, &seed_pattern(spec.kind.size()))));
        device
            .attach(spec.address, Box::new(eeprom.clone()))
            .map_err(|e| anyhow::anyhow!("at24 at {:#04x}: {e:?}", spec.address))?;
        eeproms.push((*spec, eeprom));
    }
    let cursor = vm.console().cursor();
    let redir = Redir::plug(vm, id, Box::new(device.clone())).await?;
    let bound = async {
        wait_cp2112_bound(vm, id, cursor).await?;
        discover_cp2112(vm, at24).await
    }
    .await;
    let (nodes, summary) = match bound {
        Ok(found) => found,
        // QEMU has the usb-redir device and we serve it: take it out again, so a failed plug
        // leaves neither a device in QEMU nor a link thread behind.
        Err(e) => {
            return Err(match redir.unplug(vm, UnplugHow::Graceful, CLEANUP_TIMEOUT).await {
                Ok(_) => e.context(format!("the plug of {id} failed; its usb-redir device was removed again")),
                Err(cleanup) => e.context(format!("the plug of {id} failed, and removing its usb-redir device failed too: {cleanup:#}")),
            });
        }
    };
    Ok((
        Plugged::Cp2112 {
            redir,
            device,
            eeproms,
            drop_at_transfer: None,
            nodes,
        },
        format!("hid-cp2112 bound; {summary}"),
    ))
}

async fn plug_virtio_i2c(vm: &mut Vm, id: &str, at24: &[At24Spec], lingering: &mut Vec<VirtioI2c>) -> Result<(Plugged, String)> {
    let mut bus = devices::i2c::I2cBus::new();
    let mut eeproms = Vec::new();
    for spec in at24 {
        let eeprom = Arc::new(Mutex::new(At24::seeded(spec.kind, &seed_pattern(spec.kind.size()))));
        bus.attach(spec.address, Box::new(eeprom.clone())).map_err(|e| anyhow::anyhow!("at24 at {:#04x}: {e}", spec.address))?;
        eeproms.push((*spec, eeprom));
    }
    // The adapters there before, so the new one is told apart from a surprise-removed one.
    let before = vm
        .agent()
        .exec_ok(&["sh", "-c", "grep -l i2c_virtio /sys/bus/i2c/devices/i2c-*/name 2>/dev/null; true"], vm.pace().scale(ENUMERATE_TIMEOUT))
        .await?
        .stdout_text()
        .to_string();
    let port = vm.claim_root_port().context("no free PCIe root port for a virtio-i2c adapter")?;
    let device = match VirtioI2c::plug(vm, id, &port, bus).await {
        Ok(device) => device,
        Err(e) => {
            vm.release_root_port(&port);
            return Err(e);
        }
    };
    match discover_virtio_i2c(vm, &before, at24).await {
        Ok((nodes, summary)) => Ok((Plugged::VirtioI2c { device, eeproms, nodes }, format!("i2c-virtio bound; {summary}"))),
        Err(e) => Err(match device.unplug(vm, CLEANUP_TIMEOUT).await {
            Ok(_) => {
                vm.release_root_port(&port);
                e.context(format!("the plug of {id} failed; its device was removed again"))
            }
            Err(cleanup) => {
                lingering.extend(cleanup.device);
                e.context(format!("the plug of {id} failed, and removing its device failed too: {:#}", cleanup.error))
            }
        }),
    }
}

/// A scenario's fault for a virtio-i2c adapter (`transfers`: how many it has started so far):
/// a reply delay, NAK, an error (any `transfer_error`) and vanishing as a transfer starts.
fn virtio_i2c_faults(fault: &crate::drive::schedule::PlannedFault, transfers: u64) -> Result<devices::virtio_i2c::Faults> {
    if let Some(misfit) = crate::drive::scenario::virtio_i2c_fault_misfit(fault.busy, fault.stall_ep0, fault.unplug_after_transfers, fault.unplug_how) {
        bail!("{}: {misfit}", fault.id);
    }
    Ok(devices::virtio_i2c::Faults {
        // Schedules are validated on load; a bad value still must not panic here.
        reply_delay: Duration::try_from_secs_f64(fault.reply_delay_ms / 1e3).unwrap_or_default(),
        nak: fault.nak,
        error: fault.transfer_error.is_some(),
        vanish_at_transfer: fault.unplug_after_transfers.map(|n| transfers + n),
    })
}

/// Waits for the new i2c-virtio adapter (not among `before`), instantiates the at24 clients.
async fn discover_virtio_i2c(vm: &Vm, before: &str, at24: &[At24Spec]) -> Result<(GuestNodes, String)> {
    let mut script = format!(
        r#"set -e
before="{}"
new_adapter() {{
  f=""
  for n in /sys/bus/i2c/devices/i2c-*/name; do
    [ -e "$n" ] || continue
    read -r name < "$n" || true
    case "$name" in *i2c_virtio*) case " $before " in *" $n "*) ;; *) f=$n;; esac;; esac
  done
  [ -n "$f" ]
}}
{}
new_adapter || {{ echo "no new i2c-virtio adapter appeared" >&2; exit 1; }}
{}"#,
        before.split_whitespace().collect::<Vec<_>>().join(" "),
        wait_in_shell("new_adapter"),
        ADAPTER_NODES,
    );
    for spec in at24 {
        script.push_str(&at24_instantiate(spec));
    }
    let out = vm.agent().exec_ok(&["sh", "-c", &script], vm.pace().scale(ENUMERATE_TIMEOUT)).await.context("finding the i2c-virtio adapter and instantiating its at24 clients")?;
    let text = out.stdout_text();
    let mut nodes = cp2112_nodes(&text).with_context(|| format!("reading the adapter's nodes from the guest's answer {text:?}"))?;
    nodes.gpio_lines = 0;
    Ok((nodes, text.split_whitespace().collect::<Vec<_>>().join(" ")))
}

/// Shell lines that poll `condition` (a shell command) every 50 ms, at most 200 times (10 s
/// on the reference machine; the request's own deadline is scaled by the pace). The guest
/// scripts here use shell builtins only, apart from `sleep` while they wait: each fork and
/// exec of a busybox applet costs ~60 ms of a TCG guest, and a plug used to spend more than
/// a second of its time on them.
fn wait_in_shell(condition: &str) -> String {
    format!("i=0; while ! {condition}; do [ $i -lt 200 ] || break; i=$((i + 1)); sleep 0.05; done")
}

/// From the adapter's `name` file `$f`: prints `bus=N`, `hid=` (the adapter's parent device)
/// and `driver=` (that device's driver directory); leaves `$bus` (`i2c-N`) and `$hid` (the
/// parent's sysfs path) set. `cd -P` resolves the symlinks as `readlink -f` would, without a
/// process. Ends with a newline: what follows is spliced in after it.
const ADAPTER_NODES: &str = r#"bus=${f%/name}; bus=${bus##*/}; echo "bus=${bus#i2c-}"
cd -P "/sys/bus/i2c/devices/$bus/.."; hid=$PWD; echo "hid=${hid##*/}"
cd -P "$hid/driver"; echo "driver=$PWD"
cd /
"#;

/// The shell lines that instantiate one at24 client on adapter `$bus` and print its nvmem.
fn at24_instantiate(spec: &At24Spec) -> String {
    let client = format!("${{bus#i2c-}}-{:04x}", spec.address);
    format!(
        "echo {} {:#04x} > /sys/bus/i2c/devices/$bus/new_device\n\
         {}\n\
         [ -e /sys/bus/i2c/devices/{client}/driver ] || {{ echo \"at24 did not bind to {client}\" >&2; exit 1; }}\n\
         nvmem=\"\"; for n in /sys/bus/i2c/devices/{client}/*-*; do [ -e \"$n\" ] && {{ nvmem=${{n##*/}}; break; }}; done\n\
         echo \"nvmem {:#04x}=$nvmem\"\n",
        spec.kind.name(),
        spec.address,
        wait_in_shell(&format!("[ -e /sys/bus/i2c/devices/{client}/driver ]")),
        spec.address
    )
}

/// Waits for hid_connect's line: hid-cp2112 has started the HID device.
async fn wait_cp2112_bound(vm: &Vm, id: &str, cursor: crate::run::console::LineCursor) -> Result<()> {
    vm.console()
        .wait_until(cursor, "the hid-cp2112 bind", vm.pace().scale(ENUMERATE_TIMEOUT), |l| l.contains("0003:10C4:EA90") && l.contains(" USB HID v"))
        .await
        .with_context(|| format!("the guest did not bind hid-cp2112 to {id}"))?;
    Ok(())
}

/// Finds the bound CP2112's nodes and instantiates its at24 clients; returns the nodes and a
/// one-line summary.
async fn discover_cp2112(vm: &Vm, at24: &[At24Spec]) -> Result<(GuestNodes, String)> {
    // One `key=value` line per node: the adapter, and through its parent (the HID device) the
    // hidraw node and the gpiochip; then each at24 client's nvmem device.
    let mut script = format!(
        r#"set -e
cp2112_adapter() {{
  f=""
  for n in /sys/bus/i2c/devices/i2c-*/name; do
    [ -e "$n" ] || continue
    read -r name < "$n" || true
    case "$name" in "CP2112 SMBus Bridge on hidraw"*) f=$n;; esac
  done
  [ -n "$f" ]
}}
{}
cp2112_adapter || {{ echo "no CP2112 I2C adapter appeared" >&2; exit 1; }}
{}
hidraw=""; for n in "$hid"/hidraw/*; do [ -e "$n" ] && {{ hidraw=${{n##*/}}; break; }}; done; echo "hidraw=$hidraw"
gpiochip=""; for n in "$hid"/gpiochip*; do [ -e "$n" ] && {{ gpiochip=${{n##*/}}; break; }}; done; echo "gpiochip=$gpiochip"
"#,
        wait_in_shell("cp2112_adapter"),
        ADAPTER_NODES,
    );
    for spec in at24 {
        script.push_str(&at24_instantiate(spec));
    }
    let out = vm.agent().exec_ok(&["sh", "-c", &script], vm.pace().scale(ENUMERATE_TIMEOUT)).await.context("finding the CP2112's nodes and instantiating its at24 clients")?;
    let text = out.stdout_text();
    let nodes = cp2112_nodes(&text).with_context(|| format!("reading the CP2112's nodes from the guest's answer {text:?}"))?;
    Ok((nodes, text.split_whitespace().collect::<Vec<_>>().join(" ")))
}

/// Parses the `key=value` lines of the CP2112 discovery script.
fn cp2112_nodes(text: &str) -> Result<GuestNodes> {
    let mut nodes = GuestNodes { gpio_lines: 8, ..GuestNodes::default() };
    let (mut hid, mut driver) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        match key {
            "bus" => nodes.i2c_bus = Some(value.parse().with_context(|| format!("adapter number {value:?}"))?),
            "hid" => hid = Some(value.to_string()),
            "driver" => driver = Some(value.to_string()),
            "hidraw" if !value.is_empty() => nodes.hidraw = Some(format!("/dev/{value}")),
            "gpiochip" if !value.is_empty() => nodes.gpiochip = Some(format!("/dev/{value}")),
            _ => {
                if let Some(addr) = key.strip_prefix("nvmem 0x") {
                    let addr = u8::from_str_radix(addr, 16).with_context(|| format!("address {addr:?}"))?;
                    nodes.nvmem.push((addr, value.to_string()));
                }
            }
        }
    }
    nodes.driver = driver.zip(hid);
    if nodes.i2c_bus.is_none() || nodes.driver.is_none() {
        bail!("no adapter, HID device or driver in the answer");
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at24_specs_parse_and_reject() {
        assert_eq!("0x50:24c02".parse::<At24Spec>().unwrap(), DEFAULT_AT24);
        assert_eq!("51:24c32".parse::<At24Spec>().unwrap(), At24Spec { address: 0x51, kind: At24Kind::C32 });
        for bad in ["0x50", "0x50:24c99", "0x99:24c02", "zz:24c02", "0x03:24c02"] {
            assert!(bad.parse::<At24Spec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cp2112_nodes_come_from_the_discovery_lines() {
        let text = "bus=3\nhid=0003:10C4:EA90.0002\ndriver=/sys/bus/hid/drivers/cp2112\nhidraw=hidraw1\ngpiochip=gpiochip2\nnvmem 0x50=3-00500\n";
        let nodes = cp2112_nodes(text).unwrap();
        assert_eq!(nodes.i2c_bus, Some(3));
        assert_eq!(nodes.hidraw.as_deref(), Some("/dev/hidraw1"));
        assert_eq!(nodes.gpiochip.as_deref(), Some("/dev/gpiochip2"));
        assert_eq!(nodes.nvmem, vec![(0x50, "3-00500".to_string())]);
        assert_eq!(nodes.driver.unwrap(), ("/sys/bus/hid/drivers/cp2112".to_string(), "0003:10C4:EA90.0002".to_string()));
        assert!(cp2112_nodes("hid=x\n").is_err());
        assert!(cp2112_nodes("bus=zz\nhid=x\n").is_err());
    }

    #[test]
    fn a_cancelled_unplug_is_recorded_and_a_finished_one_is_not() {
        let mut interrupted = BTreeSet::new();
        InFlight::start(&mut interrupted, "done").done();
        assert!(interrupted.is_empty());
        // A future cancelled at the step deadline drops its guard without finishing.
        let mut testbed = Testbed::new();
        let cancelled = async {
            let _guard = InFlight::start(&mut testbed.interrupted, "kbd");
            std::future::pending::<()>().await;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert!(rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(10), cancelled).await })
            .is_err());
        assert_eq!(testbed.interrupted(), vec!["kbd".to_string()]);
        assert!(
            testbed
                .unknown("kbd")
                .to_string()
                .contains("cancelled half-way"),
            "{}",
            testbed.unknown("kbd")
        );
        assert!(testbed
            .unknown("x")
            .to_string()
            .contains("no device with id"));
    }

    #[test]
    fn seed_pattern_is_not_blank() {
        let p = seed_pattern(256);
        assert_eq!(p.len(), 256);
        assert!(p.iter().any(|&b| b != 0xff) && p[0] != p[1]);
    }
}
