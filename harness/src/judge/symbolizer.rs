//! A run's symbolizer: the kernel's vmlinux, loaded on the first report (a debug vmlinux is
//! ~100 MiB), and every module a report's frames name (`at24_read+0x1b/0x40 [nvmem_holder]`)
//! loaded from the build's modules tree the first time one is named. Blocking: call it off
//! the async runtime (the results writer's thread does).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use report::symbolize::{parse_frame, Symbolizer};

use crate::judge::results::KernelMeta;

pub struct KernelSymbolizer {
    /// Taken when loading is tried, so a vmlinux that fails to load is tried once.
    vmlinux: Option<PathBuf>,
    /// File names are made relative to these (the source tree, a series' base tree).
    roots: Vec<PathBuf>,
    /// The build's `INSTALL_MOD_PATH` tree.
    modules_tree: Option<PathBuf>,
    symbolizer: Option<Symbolizer>,
    /// Module name as printed → its `.ko`, indexed on the first module frame.
    modules: Option<HashMap<String, PathBuf>>,
    /// Module names already added or tried.
    tried: HashSet<String>,
}

impl KernelSymbolizer {
    pub fn new(kernel: &KernelMeta) -> KernelSymbolizer {
        KernelSymbolizer {
            vmlinux: kernel.vmlinux.clone(),
            roots: kernel.source_tree.iter().chain(&kernel.base_tree).cloned().collect(),
            modules_tree: kernel.modules.clone(),
            symbolizer: None,
            modules: None,
            tried: HashSet::new(),
        }
    }

    /// `text` with `file:line` after every frame that resolves; `None` without a vmlinux.
    pub fn symbolize(&mut self, text: &str) -> Option<String> {
        if self.symbolizer.is_none() {
            let vmlinux = self.vmlinux.take()?;
            match Symbolizer::new(&vmlinux) {
                Ok(mut s) => {
                    for root in &self.roots {
                        s.strip_root(root);
                    }
                    self.symbolizer = Some(s);
                }
                Err(e) => {
                    tracing::warn!("cannot symbolize with {}: {e}", vmlinux.display());
                    return None;
                }
            }
        }
        self.add_modules_of(text);
        self.symbolizer.as_ref().map(|s| s.symbolize_text(text))
    }

    /// Loads the modules `text`'s frames name that are not loaded yet.
    fn add_modules_of(&mut self, text: &str) {
        let named: Vec<String> = text
            .lines()
            .filter_map(|l| parse_frame(l).and_then(|(f, _)| f.module))
            .filter(|m| !self.tried.contains(m))
            .collect();
        if named.is_empty() {
            return;
        }
        let index = self.modules.get_or_insert_with(|| {
            let Some(tree) = &self.modules_tree else { return HashMap::new() };
            match crate::build::kmod::installed(tree) {
                Ok(found) => found.into_iter().map(|(name, path)| (crate::build::kmod::printed_name(&name), path)).collect(),
                Err(e) => {
                    tracing::warn!("cannot list the modules to symbolize with: {e:#}");
                    HashMap::new()
                }
            }
        });
        let Some(symbolizer) = self.symbolizer.as_mut() else { return };
        for name in named {
            if !self.tried.insert(name.clone()) {
                continue;
            }
            if let Some(path) = index.get(&name) {
                if let Err(e) = symbolizer.add_module(&name, path) {
                    tracing::warn!("cannot symbolize frames in {name}: {e}");
                }
            }
        }
    }
}
