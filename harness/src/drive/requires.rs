//! What a scenario needs of a kernel build beyond its variant: a driver or Rust that some
//! kernel versions cannot have (`kernels/configs/<ver>/absent`, recorded in the build's
//! `meta.json`). A scenario's needs are its `requires:` plus what its steps imply (a
//! `gpio-virtuser` holder, a configfs path under `gpio-virtuser`, the Rust holder), so a
//! scenario cannot forget one; on a kernel whose build lacks one the run is skipped with the
//! written-down reason, never judged clean.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use agent::HoldKind;
use crate::build::kernel::Absent;
use crate::drive::scenario::{KernelVariant, Scenario, Step};

/// What each kernel variant's build is without (its written-down absences).
pub type Absences = BTreeMap<KernelVariant, Vec<Absent>>;

/// One thing a kernel build has or lacks, by the name `requires:` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// The kernel's Rust support (`CONFIG_RUST`): Rust holders and samples.
    Rust,
    /// The gpio-virtuser driver (`CONFIG_GPIO_VIRTUSER`, upstream since 6.11).
    GpioVirtuser,
}

impl Requirement {
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Rust => "rust",
            Requirement::GpioVirtuser => "gpio-virtuser",
        }
    }

    /// The config option a build must have for it.
    pub fn option(self) -> &'static str {
        match self {
            Requirement::Rust => "CONFIG_RUST",
            Requirement::GpioVirtuser => "CONFIG_GPIO_VIRTUSER",
        }
    }

    /// What a holder of `kind` needs of the kernel.
    pub fn of_holder(kind: HoldKind) -> Option<Requirement> {
        match kind {
            HoldKind::GpioVirtuser | HoldKind::GpioVirtuserIrq => Some(Requirement::GpioVirtuser),
            HoldKind::NvmemKernelRs => Some(Requirement::Rust),
            HoldKind::GpioCdev
            | HoldKind::GpioEvent
            | HoldKind::GpioChipWatch
            | HoldKind::NvmemSysfs
            | HoldKind::I2cDev
            | HoldKind::I2cSmbus
            | HoldKind::Hidraw
            | HoldKind::NvmemKernel
            | HoldKind::GpioAggregator => None,
        }
    }

    /// What a guest path (a step's file, or a word of its command) needs: gpio-virtuser's
    /// configfs and debugfs directories exist only where the driver does.
    fn of_path(path: &str) -> Option<Requirement> {
        const VIRTUSER: [&str; 2] = ["/sys/kernel/config/gpio-virtuser", "/sys/kernel/debug/gpio-virtuser"];
        VIRTUSER.iter().any(|dir| path.contains(dir)).then_some(Requirement::GpioVirtuser)
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything `scenario` needs: its `requires:` and what its steps imply.
pub fn of_scenario(scenario: &Scenario) -> BTreeSet<Requirement> {
    let mut out: BTreeSet<Requirement> = scenario.requires.iter().copied().collect();
    let mut pending: Vec<&Step> = scenario.setup.iter().chain(&scenario.steps).collect();
    while let Some(step) = pending.pop() {
        let found = match step {
            Step::Hold(h) => Requirement::of_holder(h.kind),
            Step::Write { path, .. } | Step::Mkdir(path) | Step::Rmdir(path) => Requirement::of_path(path),
            Step::Exec(e) => e.argv.iter().find_map(|word| Requirement::of_path(word)),
            Step::Only(only) => {
                pending.push(only.step.as_ref());
                None
            }
            _ => None,
        };
        out.extend(found);
    }
    out
}

/// Why a build lacking `absent` cannot run a scenario needing `needs` (`requires gpio-virtuser:
/// CONFIG_GPIO_VIRTUSER is absent from this build (why; where it is written)`), or `None`.
pub fn unmet(needs: &BTreeSet<Requirement>, absent: &[Absent]) -> Option<String> {
    let reasons: Vec<String> = needs
        .iter()
        .filter_map(|need| {
            let gone = absent.iter().find(|a| a.option == need.option())?;
            Some(format!("requires {need}: {} is absent from this build ({}; {})", gone.option, gone.reason, gone.written_at))
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The options each of `kernels` is built without, from its version's written-down list
/// (`kernels/configs/<ver>/absent`: the build drops exactly these and records them in its
/// `meta.json`), known before anything is built so the matrix can plan its skips.
pub fn absent_by_kernel(kernels: &[KernelVariant]) -> anyhow::Result<Absences> {
    let configs = crate::paths::repo_root().join("kernels").join("configs");
    kernels
        .iter()
        .map(|&k| Ok((k, crate::build::kernel::version::load(&configs, k.debian().version())?.absent)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn needs(yaml: &str) -> Vec<&'static str> {
        let s = Scenario::parse(yaml, Path::new("t.yaml")).unwrap();
        of_scenario(&s).into_iter().map(Requirement::name).collect()
    }

    #[test]
    fn steps_imply_what_they_need() {
        assert_eq!(needs("name: t\nsteps:\n  - observe\n"), Vec::<&str>::new());
        let holder = "name: t\nsteps:\n  - plug: { device: gpio-sim, id: g }\n  - hold: { name: h, kind: gpio-virtuser-irq, on: g }\n";
        assert_eq!(needs(holder), ["gpio-virtuser"]);
        let configfs = "name: t\nsetup:\n  - mkdir: /sys/kernel/config/gpio-virtuser/x\nsteps:\n  - observe\n";
        assert_eq!(needs(configfs), ["gpio-virtuser"]);
        let wrapped = "name: t\nsteps:\n  - only: { kernels: [vanilla], step: { exec: { argv: [cat, /sys/kernel/debug/gpio-virtuser/a/b] } } }\n";
        assert_eq!(needs(wrapped), ["gpio-virtuser"]);
        assert_eq!(needs("name: t\nrequires: [rust]\nsteps:\n  - observe\n"), ["rust"]);
    }

    #[test]
    fn an_unknown_requirement_is_an_error_at_its_place() {
        let err = Scenario::parse("name: t\nrequires: [rust, wifi]\nsteps:\n  - observe\n", Path::new("t.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("t.yaml:2:") && err.contains("wifi") && err.contains("gpio-virtuser"), "{err}");
    }

    #[test]
    fn the_matrix_skips_a_kernel_lacking_a_requirement() {
        let yaml = "name: t\nkernels: [vanilla-6.1, vanilla]\nrequires: [gpio-virtuser]\nsteps:\n  - observe\n";
        let s = Scenario::parse(yaml, Path::new("t.yaml")).unwrap();
        let kernels = [KernelVariant::Vanilla61, KernelVariant::Vanilla];
        let cells = crate::drive::matrix::plan(&[s], &kernels, &absent_by_kernel(&kernels).unwrap(), 1, 1, 1);
        let why = cells[0].skip.as_deref().unwrap_or_default();
        assert!(why.starts_with("requires gpio-virtuser: CONFIG_GPIO_VIRTUSER is absent from this build ("), "{why}");
        assert_eq!(cells[1].skip, None);
    }

    /// On the shipped 6.1 absences, exactly the shipped scenarios that use gpio-virtuser or Rust
    /// are skipped, each with the written-down reason.
    #[test]
    fn shipped_scenarios_on_the_6_1_build() {
        let absent = absent_by_kernel(&[KernelVariant::Vanilla61]).unwrap().remove(&KernelVariant::Vanilla61).unwrap();
        let dir = crate::paths::repo_root().join("scenarios");
        let mut unrunnable: Vec<(String, String)> = Vec::new();
        for path in crate::drive::scenario::find(&dir, "*").unwrap() {
            let s = Scenario::load(&path).unwrap();
            if let Some(why) = unmet(&of_scenario(&s), &absent) {
                unrunnable.push((s.name, why));
            }
        }
        let names: Vec<&str> = unrunnable.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "cp2112-gpio-irq-release",
                "cp2112-held-across-unplug",
                "gpio-virtuser-irq-teardown",
                "resmgr-sample-unplug",
                "rust-nvmem-holder-unplug",
                "virtio-i2c-rust-nvmem-holder-unplug"
            ]
        );
        let (_, why) = &unrunnable[0];
        assert!(why.starts_with("requires gpio-virtuser: CONFIG_GPIO_VIRTUSER is absent from this build (gpio-virtuser came upstream after 6.1"), "{why}");
        assert!(why.contains("kernels/configs/6.1/absent:"), "{why}");
        let (_, why) = &unrunnable[3];
        assert!(why.starts_with("requires rust: CONFIG_RUST is absent from this build"), "{why}");
        assert!(absent_by_kernel(&[KernelVariant::Vanilla]).unwrap()[&KernelVariant::Vanilla].is_empty());
    }
}
