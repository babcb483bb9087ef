//! Run: one QEMU and its channels. The VM itself, QMP for devices, the serial console for the
//! kernel log, the virtio-serial link to the guest agent for control, and the host's pace that
//! scales every deadline waiting on the guest.

pub mod agent_link;
mod lines;
pub mod console;
pub mod pace;
pub mod qmp;
pub mod vm;
