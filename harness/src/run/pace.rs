//! How fast this host runs our guests, and deadlines that follow it.
//!
//! Machines of the same kind differ about 3× in speed, and a TCG guest that prints hundreds
//! of KASAN reports through its serial console is slower still. A deadline written as a
//! constant is tuned to the machine it was written on: on a slower one a busy guest looks
//! dead. So every deadline that waits on the guest is a *reference* duration (what the
//! machines these were written on need, with margin) scaled by [`Pace::factor`], measured
//! on this host from the boot: the time from QEMU's start to the guest agent's first answer,
//! against [`REFERENCE_BOOT`].
//!
//! Liveness is a separate question with its own rule ([`crate::run::vm::Vm::responsive`]): a
//! guest whose agent does not answer but whose console keeps moving is busy, not dead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// QEMU start to agent ready under TCG on the machines the reference deadlines were written
/// on: 4.0–4.5 s measured with the kernel config of then. Each boot change since scaled it by
/// the ratio measured back to back on one host, so the same host keeps the same pace and
/// every deadline stays where it was: the boot-speed config (LZ4, no BSD ptys, no PS/2) took
/// a third off (32.4 s → 21.8 s, three boots each, interleaved: 4.5 s → 3.0 s); the lean
/// config, the VM without i8042/AHCI/SMBus and `/init`'s single mount exec took 15% more
/// (4.81 s → 4.11 s, seven boots each, interleaved: 3.0 s → 2.6 s); the frame-pointer
/// unwinder, the agent as `/init` and 512 MiB of RAM took 14% more (7.40 s → 6.38 s, ten boots
/// each, interleaved, on a loaded host where single sets ranged 0.80–0.91: 2.6 s → 2.2 s,
/// rounded down so that deadlines err long); the image without per-applet links and the
/// kernel's `noreplace-smp pci=nommconf pnpacpi=off` took 6–10% more (6.41 s → 5.80 s: 0.90
/// by the means, 0.94 by the medians and the median pair, sixteen boots each, interleaved:
/// 2.2 s → 2.0 s, again rounded down).
pub const REFERENCE_BOOT: Duration = Duration::from_millis(2000);

/// A factor past this is not a slow host but a broken one; deadlines stop growing.
const MAX_FACTOR: f64 = 10.0;

/// This host's speed relative to the reference machines: 1.0 there, 3.0 on a host three
/// times slower. Never below 1: a fast host (KVM) keeps the reference deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    factor: f64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace { factor: 1.0 }
    }
}

impl Pace {
    /// From the time a boot took (QEMU start to agent ready).
    pub fn from_boot(booted_in: Duration) -> Pace {
        Pace::from_factor(booted_in.as_secs_f64() / REFERENCE_BOOT.as_secs_f64())
    }

    /// `factor` clamped to [1, MAX_FACTOR]; NaN counts as 1.
    pub fn from_factor(factor: f64) -> Pace {
        let factor = if factor.is_nan() { 1.0 } else { factor.clamp(1.0, MAX_FACTOR) };
        Pace { factor }
    }

    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// A reference deadline on this host.
    pub fn scale(&self, reference: Duration) -> Duration {
        reference.mul_f64(self.factor)
    }
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}x", self.factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_follows_the_boot_and_is_bounded() {
        assert_eq!(Pace::from_boot(REFERENCE_BOOT / 2).factor(), 1.0, "a fast host keeps the reference");
        assert_eq!(Pace::from_boot(REFERENCE_BOOT).factor(), 1.0);
        let slow = Pace::from_boot(REFERENCE_BOOT * 3);
        assert!((slow.factor() - 3.0).abs() < 1e-9, "{slow}");
        assert_eq!(slow.scale(Duration::from_secs(10)), Duration::from_secs(30));
        assert_eq!(Pace::from_boot(Duration::from_secs(3600)).factor(), MAX_FACTOR);
        assert_eq!(Pace::from_factor(f64::NAN).factor(), 1.0);
        assert_eq!(Pace::from_factor(f64::INFINITY).factor(), MAX_FACTOR);
        assert_eq!(slow.to_string(), "3.0x");
    }
}
