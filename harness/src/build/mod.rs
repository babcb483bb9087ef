//! Build: what a run boots. Kernel builds (source, config fragments, patch series, cached
//! out-of-tree builds), the initramfs, and the out-of-tree test modules built with the kernel.

pub mod image;
pub mod kernel;
pub mod kmod;
