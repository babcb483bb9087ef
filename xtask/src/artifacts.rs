//! Choosing the kernel and image a command boots: our cached build by default, a kernel
//! variant by name (`--kernel vanilla-6.1`), a kernel tree of the user's (`--src`), a patch
//! series (`--series`), or a prebuilt `--bzimage`.

use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct KernelChoice {
    /// Boot this prebuilt bzImage instead of building one (no modules are added to the image).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["src", "series"])]
    pub bzimage: Option<PathBuf>,
    /// Kernel tree to build (never written to: builds go to the cache with O=).
    #[arg(long, value_name = "DIR")]
    pub src: Option<PathBuf>,
    /// Patch series from kernels/patches/NAME applied on a private copy of the source.
    #[arg(long, value_name = "NAME")]
    pub series: Option<String>,
    /// The Debian source built without `--src` (set by a variant, `--kernel`).
    #[arg(skip)]
    pub debian: harness::build::kernel::DebianSource,
}

impl KernelChoice {
    /// The build of a kernel variant: its series on its Debian source.
    pub fn of_variant(variant: harness::drive::scenario::KernelVariant) -> KernelChoice {
        KernelChoice { series: variant.series().map(String::from), debian: variant.debian(), ..Default::default() }
    }
}

/// `--kernel NAME`: a kernel variant by the name scenarios use, for commands that boot or
/// build one kernel.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct VariantChoice {
    /// Kernel variant: vanilla (Debian 6.12), resmgr (6.12 + kernels/patches/resmgr) or
    /// vanilla-6.1 (Debian's 6.1 LTS, without Rust and gpio-virtuser).
    #[arg(long = "kernel", value_name = "VARIANT", value_parser = harness::drive::scenario::KernelVariant::from_name, conflicts_with_all = ["bzimage", "src", "series"])]
    pub kernel: Option<harness::drive::scenario::KernelVariant>,
}

impl VariantChoice {
    /// `choice`, or the named variant's build if `--kernel` was given.
    pub fn over(&self, choice: &KernelChoice) -> KernelChoice {
        self.kernel.map_or_else(|| choice.clone(), KernelChoice::of_variant)
    }
}

/// The kernel a command boots.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub bzimage: PathBuf,
    /// `INSTALL_MOD_PATH` tree to put in the image.
    pub modules: Option<PathBuf>,
    pub label: String,
    /// Present when we built it (not for a prebuilt `--bzimage`).
    pub built: Option<harness::build::kernel::Kernel>,
}

impl Kernel {
    pub fn describe(&self) -> String {
        format!("{} ({})", self.label, self.bzimage.display())
    }

    /// What a run folder records about this kernel.
    pub fn meta(&self) -> harness::judge::results::KernelMeta {
        let built = self.built.as_ref();
        harness::judge::results::KernelMeta {
            label: self.label.clone(),
            bzimage: self.bzimage.clone(),
            vmlinux: built.map(|k| k.vmlinux.clone()),
            modules: self.modules.clone(),
            source_tree: built.map(|k| k.source_tree.clone()),
            base_tree: built.and_then(|k| k.base_tree.clone()),
            release: built.map(|k| k.release.clone()),
            source_id: built.map(|k| k.source_id.clone()),
            series: built.and_then(|k| k.series.clone()),
            config_hash: built.map(|k| k.config_hash.clone()),
        }
    }
}

/// Builds (or reuses) the kernel and the image that matches it.
pub fn kernel_and_image(choice: &KernelChoice) -> Result<(Kernel, PathBuf)> {
    kernel_and_image_keyed(choice).map(|(kernel, image)| (kernel, image.path))
}

/// [`kernel_and_image`] with the image's cache key (recorded by runs, reused by replays).
pub fn kernel_and_image_keyed(choice: &KernelChoice) -> Result<(Kernel, harness::build::image::Image)> {
    let kernel = kernel(choice)?;
    let image = image_for(&kernel)?;
    Ok((kernel, image))
}

/// Builds (or reuses) the kernel alone.
pub fn kernel(choice: &KernelChoice) -> Result<Kernel> {
    Ok(match &choice.bzimage {
        Some(path) => {
            if !path.is_file() {
                bail!("--bzimage {}: no such file", path.display());
            }
            Kernel { bzimage: path.clone(), modules: None, label: "prebuilt kernel".into(), built: None }
        }
        None => {
            let built = harness::build::kernel::build(&harness::build::kernel::KernelRequest {
                src: choice.src.clone(),
                series: choice.series.clone(),
                debian: choice.debian,
                force: false,
            })?;
            Kernel { bzimage: built.bzimage.clone(), modules: built.modules.clone(), label: built.describe(), built: Some(built) }
        }
    })
}

/// Builds (or reuses) the initramfs carrying `kernel`'s modules.
pub fn image_for(kernel: &Kernel) -> Result<harness::build::image::Image> {
    harness::build::image::build(&harness::build::image::ImageRequest { modules: kernel.modules.clone() })
}
