//! Emulated devices that QEMU's guest sees as real hardware: the device-exporting side of the
//! usb-redirection protocol (`usbredir`), a Silicon Labs CP2112 HID USB-to-SMBus bridge
//! (`cp2112`), an I2C bus where targets attach by address (`i2c`), at24 EEPROMs (`at24`) and the
//! device side of virtio-i2c requests (`virtio_i2c`, served over vhost-user by `harness::devices::vhost_i2c`).
//!
//! Everything here is sans-IO and parses guest-controlled bytes with explicit lengths: the
//! guest is untrusted, so malformed traffic is an error value, never a panic.

pub mod at24;
pub mod cp2112;
pub mod i2c;
pub mod usbredir;
pub mod virtio_i2c;
