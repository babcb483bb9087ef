//! unplug-torture harness: everything reusable behind `cargo xtask`, one folder per room of
//! ARCHITECTURE.md:
//!
//! - [`build`]: what a run boots — kernel builds (`kernel`), the initramfs (`image`), our
//!   out-of-tree test modules (`kmod`).
//! - [`run`]: one QEMU and its channels — the VM (`vm`), QMP (`qmp`), the serial console
//!   (`console`), the host's link to the guest agent (`agent_link`), the host's pace (`pace`).
//! - [`devices`]: what is plugged and what holds it — devices by name (`testbed`), usb-redir
//!   plumbing (`plug`), in-kernel providers (`providers`), the holders' logs on the host
//!   (`holders`), the vhost-user-i2c backend (`vhost_i2c`); the emulators are the `devices`
//!   crate.
//! - [`drive`]: what happens in a run — scenarios, seeded schedules, recorded runs (`torture`),
//!   hold sessions, the run matrix, KUnit, what scenarios require of a build, progress output.
//! - [`judge`]: what a run found — results folders, observers, data integrity, the live crash
//!   parser, symbolization, A/B tables, tallies, HTML pages and KCIDB exports; the console
//!   parser is the `report` crate.
//!
//! Shared by every room: where things live (`paths`) and what the host must have (`host`).

pub mod build;
pub mod devices;
pub mod drive;
pub mod host;
pub mod judge;
pub mod paths;
pub mod run;
