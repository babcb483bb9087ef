//! `/proc/sys/kernel/tainted` decoding: a parser-independent crash signal.
//!
//! KASAN's `end_report()` taints with `B` (bad page), every `WARN` with `W`, an oops with
//! `D`, a soft lockup with `L`. The harness reads the integer after every step; a new bad
//! flag means something went wrong even if the console line was lost or not recognised.
//! Letters and bit numbers follow Documentation/admin-guide/tainted-kernels.rst.

use std::fmt;

/// (bit, letter, meaning)
const FLAGS: &[(u32, char, &str)] = &[
    (0, 'P', "proprietary module was loaded"),
    (1, 'F', "module was force loaded"),
    (2, 'S', "kernel running on an out of specification system"),
    (3, 'R', "module was force unloaded"),
    (4, 'M', "processor reported a Machine Check Exception"),
    (5, 'B', "bad page referenced or some unexpected page flags"),
    (6, 'U', "taint requested by userspace application"),
    (7, 'D', "kernel died recently, i.e. there was an OOPS or BUG"),
    (8, 'A', "ACPI table overridden by user"),
    (9, 'W', "kernel issued warning"),
    (10, 'C', "staging driver was loaded"),
    (11, 'I', "workaround for bug in platform firmware applied"),
    (12, 'O', "externally-built (out-of-tree) module was loaded"),
    (13, 'E', "unsigned module was loaded"),
    (14, 'L', "soft lockup occurred"),
    (15, 'K', "kernel has been live patched"),
    (16, 'X', "auxiliary taint, defined for and used by distros"),
    (17, 'T', "kernel was built with the struct randomization plugin"),
    (18, 'N', "an in-kernel test has been run"),
    (19, 'J', "userspace used a mutating debug operation in fwctl"),
];

/// Flags that mean the kernel hit a bug (as IGT treats them: bad page, died, warned, lockup).
const BAD: u64 = (1 << 5) | (1 << 7) | (1 << 9) | (1 << 14);

/// The taint bit mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Taint(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("invalid taint value {0:?}: expected a decimal integer")]
pub struct TaintParseError(String);

impl Taint {
    /// Parses the contents of `/proc/sys/kernel/tainted` (decimal, surrounding whitespace ok).
    pub fn parse(s: &str) -> Result<Taint, TaintParseError> {
        s.trim().parse::<u64>().map(Taint).map_err(|_| TaintParseError(s.chars().take(64).collect()))
    }

    /// Letters of the set flags in bit order, e.g. `BW`; unknown bits as `?`.
    pub fn letters(self) -> String {
        let mut out = String::new();
        for bit in 0..64 {
            if self.0 & (1 << bit) != 0 {
                out.push(FLAGS.iter().find(|(b, _, _)| *b == bit).map_or('?', |f| f.1));
            }
        }
        out
    }

    /// The set flags with their meaning, for summaries.
    pub fn describe(self) -> Vec<(char, &'static str)> {
        FLAGS.iter().filter(|(bit, _, _)| self.0 & (1 << bit) != 0).map(|(_, c, m)| (*c, *m)).collect()
    }

    /// Flags set in `self` but not in `before`.
    pub fn new_since(self, before: Taint) -> Taint {
        Taint(self.0 & !before.0)
    }

    /// True if any flag saying "the kernel hit a bug" (B, D, W, L) is set.
    pub fn is_bad(self) -> bool {
        self.0 & BAD != 0
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("not tainted")
        } else {
            write!(f, "{} ({})", self.letters(), self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_taint() {
        let t = Taint::parse("544\n").unwrap(); // B (32) + W (512)
        assert_eq!(t.letters(), "BW");
        assert!(t.is_bad());
        assert_eq!(Taint(4096).letters(), "O");
        assert!(!Taint(4096).is_bad());
        assert_eq!(t.new_since(Taint(512)).letters(), "B");
        assert_eq!(Taint(1 << 40).letters(), "?");
        assert!(Taint::parse("x").is_err());
        assert_eq!(Taint(0).to_string(), "not tainted");
        assert_eq!(t.describe()[0].0, 'B');
    }
}
