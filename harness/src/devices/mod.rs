//! Devices: what is plugged into a VM and what holds it. Devices by name and their unplug
//! methods, usb-redir and vhost-user plumbing for the emulators of the `devices` crate,
//! in-kernel providers, and the holders (consumers in the guest) as the host sees them.

pub mod holders;
pub mod plug;
pub mod providers;
pub mod testbed;
pub mod vhost_i2c;
