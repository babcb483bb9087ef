//! unplug-torture harness: everything reusable behind `cargo xtask`.
//!
//! Rooms (see ARCHITECTURE.md): build (`kernel`, `image`), run (`vm`, `qmp`, `console`,
//! `agent`, `plug`), devices (re-exported from the `devices` crate), judge (`report`,
//! `results`, `ab`, `tally`) and drive (`scenario`, `schedule`, `matrix`, `torture`, `progress`).

pub mod ab;
pub mod agent;
pub mod console;
pub mod consumers;
pub mod crash_feed;
pub mod hold_session;
pub mod host;
pub mod integrity;
pub mod html;
pub mod image;
pub mod kcidb;
pub mod kernel;
pub mod kmod;
pub mod kunit;
pub mod matrix;
pub mod observe;
pub mod pace;
pub mod paths;
pub mod plug;
pub mod progress;
pub mod providers;
pub mod qmp;
pub mod requires;
pub mod results;
pub mod scenario;
pub mod schedule;
pub mod tally;
pub mod symbolizer;
pub mod testbed;
pub mod testenv;
pub mod torture;
pub mod vhost_i2c;
pub mod vm;

pub use devices::{at24, cp2112, i2c, usbredir};
pub use ktap;
pub use report;
