//! The devices attached to one VM, by name and id: plug, unplug, and what the guest showed.
//!
//! Scenarios and `xtask boot --with` name devices (`usb-kbd`, `cp2112`, ...); this module
//! maps a name to how it is plugged (QMP `device_add` of a QEMU model, or an emulator behind
//! `usb-redir`) and which unplug methods it supports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::qmp::QmpError;
use crate::scenario::UnplugHow;
use crate::vm::{Vm, USB_BUS};

/// QEMU's own USB devices: the xHCI/usbhid disconnect path without any emulator of ours.
const QEMU_USB: &[&str] = &["usb-kbd", "usb-mouse", "usb-tablet"];

/// How long the guest may take to enumerate a USB device under TCG.
const ENUMERATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every device name `plug` accepts.
pub fn known_devices() -> Vec<&'static str> {
    QEMU_USB.to_vec()
}

/// What happened when a device was plugged or unplugged.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub action: String,
    pub elapsed_ms: f64,
    /// The console line that showed the guest reacting, if one was awaited.
    pub guest_saw: Option<String>,
}

enum Plugged {
    QemuUsb { driver: &'static str },
}

/// The devices currently plugged into one VM.
#[derive(Default)]
pub struct Testbed {
    plugged: BTreeMap<String, Plugged>,
}

impl Testbed {
    pub fn new() -> Testbed {
        Testbed::default()
    }

    /// Ids currently plugged.
    pub fn ids(&self) -> Vec<String> {
        self.plugged.keys().cloned().collect()
    }

    /// Plugs `device` as `id` and waits until the guest has enumerated it.
    pub async fn plug(&mut self, vm: &mut Vm, device: &str, id: &str) -> Result<Outcome> {
        if self.plugged.contains_key(id) {
            bail!("a device with id {id:?} is already plugged");
        }
        let start = Instant::now();
        let Some(driver) = QEMU_USB.iter().copied().find(|d| *d == device) else {
            bail!("unknown device {device:?}; known devices: {}", known_devices().join(", "));
        };
        vm.ensure_usb_controller().await?;
        let cursor = vm.console().cursor();
        vm.qmp().device_add(driver, id, Some(USB_BUS), &[]).await.with_context(|| format!("plugging {device}"))?;
        // QEMU's USB devices are HID devices of vendor 0627. The HID core prints one
        // "<driver> 0003:0627:PPPP.NNNN: ... USB HID vX.YY ... [QEMU ...]" line when a driver
        // has bound (hid_connect); earlier lines with the same id (input:) come before binding.
        let line = vm
            .console()
            .wait_until(cursor, "the HID bind of a QEMU USB device", ENUMERATE_TIMEOUT, |l| {
                l.contains("0003:0627:") && l.contains(" USB HID v")
            })
            .await
            .with_context(|| format!("the guest did not enumerate {device} ({id})"))?;
        self.plugged.insert(id.to_string(), Plugged::QemuUsb { driver });
        Ok(Outcome {
            id: id.to_string(),
            action: format!("plug {device}"),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            guest_saw: Some(line.text),
        })
    }

    /// Unplugs `id`. An unplug QEMU never completes is [`QmpError::UnplugStuck`] in the error
    /// chain, so callers can tell a stuck unplug from an infrastructure failure.
    pub async fn unplug(&mut self, vm: &mut Vm, id: &str, how: UnplugHow, timeout: Duration) -> Result<Outcome> {
        let Some(plugged) = self.plugged.get(id) else {
            bail!("no device with id {id:?} is plugged (plugged: {:?})", self.ids());
        };
        let start = Instant::now();
        let Plugged::QemuUsb { driver } = plugged;
        if how != UnplugHow::Graceful {
            bail!("{driver} is a QEMU device: only graceful unplug (device_del) is possible, not {how:?}");
        }
        let cursor = vm.console().cursor();
        let result = vm.qmp().device_del(id, timeout).await;
        // Whether or not QEMU finished, the device is no longer ours to plug again.
        self.plugged.remove(id);
        if let Err(e @ QmpError::UnplugStuck { .. }) = result {
            return Err(e.into());
        }
        result.with_context(|| format!("unplugging {id}"))?;
        let line = vm
            .console()
            .wait_for(cursor, "USB disconnect", ENUMERATE_TIMEOUT)
            .await
            .with_context(|| format!("QEMU deleted {id} but the guest never reported a USB disconnect"))?;
        Ok(Outcome {
            id: id.to_string(),
            action: format!("unplug {id} ({how:?})").to_lowercase(),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            guest_saw: Some(line.text),
        })
    }
}
