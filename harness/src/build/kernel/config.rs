//! Kconfig fragments: parsing, merging with located conflicts, and checking that every
//! requested option survived `olddefconfig` (Kconfig silently drops options whose
//! dependencies are not met; kunit_tool's `validate_config` does the same check).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The fragment files in `dir`, in merge order (by file name, hence the numeric prefixes).
pub fn fragment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "config") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no *.config fragments in {}", dir.display());
    }
    Ok(files)
}

/// Sets every fragment option in `.config` the way `scripts/kconfig/merge_config.sh` does: the
/// symbol's old line goes, the requested one is appended, and olddefconfig resolves the rest.
pub fn apply(dot_config: &Path, fragment: &Fragment) -> Result<()> {
    let text = std::fs::read_to_string(dot_config).with_context(|| format!("reading {}", dot_config.display()))?;
    let mut out: Vec<&str> = text
        .lines()
        .filter(|line| !parse_line(line).ok().flatten().is_some_and(|(name, _)| fragment.options.contains_key(&name)))
        .collect();
    let ours = fragment.to_kconfig();
    out.extend(ours.lines());
    std::fs::write(dot_config, out.join("\n") + "\n").with_context(|| format!("writing {}", dot_config.display()))?;
    Ok(())
}

/// Where an option was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Requested options: name (without `CONFIG_`) → value (`y`, `m`, `n` for "is not set",
/// a number or a quoted string) and where it was asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fragment {
    pub options: BTreeMap<String, (String, Origin)>,
}

impl Fragment {
    /// Parses and merges `files` in order. The same option with two values is an error that
    /// names both places; malformed lines are errors with file:line.
    pub fn load(files: &[PathBuf]) -> Result<Fragment> {
        let mut merged = Fragment::default();
        for file in files {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            merged.merge_text(&text, file)?;
        }
        Ok(merged)
    }

    /// Parses `text` (from `file`) into this fragment.
    pub fn merge_text(&mut self, text: &str, file: &Path) -> Result<()> {
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin { file: file.to_path_buf(), line: i + 1 };
            let Some((name, value)) = parse_line(raw).with_context(|| format!("{origin}: {raw:?}"))? else {
                continue;
            };
            if let Some((old, first)) = self.options.get(&name) {
                if *old != value {
                    bail!("CONFIG_{name} is {old} at {first} but {value} at {origin}");
                }
                continue;
            }
            self.options.insert(name, (value, origin));
        }
        Ok(())
    }

    /// Takes out the options a kernel version cannot have (`version::Absent`). Each must be
    /// requested: a line that names nothing requested went stale, an error at its place.
    pub fn drop_absent(&mut self, absent: &[super::version::Absent]) -> Result<()> {
        for a in absent {
            if self.options.remove(a.symbol()).is_none() {
                bail!("{}: {} is not requested by any fragment; remove the line", a.written_at, a.option);
            }
        }
        Ok(())
    }

    /// The fragment as Kconfig text in a stable order: what [`apply`] appends, and the cache
    /// key's view of the requested config.
    pub fn to_kconfig(&self) -> String {
        let mut out = String::new();
        for (name, (value, _)) in &self.options {
            if value == "n" {
                out.push_str(&format!("# CONFIG_{name} is not set\n"));
            } else {
                out.push_str(&format!("CONFIG_{name}={value}\n"));
            }
        }
        out
    }

    /// Options whose value in the final `.config` differs from the request, as
    /// "CONFIG_X: requested y (file:line), got n".
    pub fn missing_in(&self, dot_config: &str) -> Vec<String> {
        let mut actual = BTreeMap::new();
        for line in dot_config.lines() {
            if let Ok(Some((name, value))) = parse_line(line) {
                actual.insert(name, value);
            }
        }
        self.options
            .iter()
            .filter_map(|(name, (want, origin))| {
                let got = actual.get(name).map(String::as_str).unwrap_or("n");
                (got != want).then(|| format!("CONFIG_{name}: requested {want} ({origin}), got {got}"))
            })
            .collect()
    }
}

/// One Kconfig line → `Some((name, value))`, `None` for blanks and comments, or an error.
fn parse_line(raw: &str) -> Result<Option<(String, String)>> {
    let line = raw.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        if let Some(name) = rest.strip_suffix(" is not set") {
            check_name(name)?;
            return Ok(Some((name.to_string(), "n".to_string())));
        }
        return Ok(None);
    }
    if line.starts_with('#') {
        return Ok(None);
    }
    let Some(rest) = line.strip_prefix("CONFIG_") else {
        bail!("expected CONFIG_NAME=value or '# CONFIG_NAME is not set'");
    };
    let Some((name, value)) = rest.split_once('=') else {
        bail!("missing '=' after CONFIG_{rest}");
    };
    check_name(name)?;
    let value = value.trim();
    let valid = matches!(value, "y" | "m" | "n")
        || value.parse::<i64>().is_ok()
        || (value.starts_with("0x") && i64::from_str_radix(&value[2..], 16).is_ok())
        || (value.len() >= 2 && value.starts_with('"') && value.ends_with('"'));
    if !valid {
        bail!("CONFIG_{name} has value {value:?}: expected y, m, n, a number or a \"string\"");
    }
    Ok(Some((name.to_string(), value.to_string())))
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
        bail!("{name:?} is not a Kconfig symbol name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(text: &str) -> Result<Fragment> {
        let mut f = Fragment::default();
        f.merge_text(text, Path::new("a.config"))?;
        Ok(f)
    }

    #[test]
    fn parses_values_and_not_set() {
        let f =
            frag("# comment\n\nCONFIG_KASAN=y\n# CONFIG_SLUB_TINY is not set\nCONFIG_NR_CPUS=4\nCONFIG_X=\"a b\"\n")
                .unwrap();
        assert_eq!(f.options["KASAN"].0, "y");
        assert_eq!(f.options["SLUB_TINY"].0, "n");
        assert_eq!(f.options["NR_CPUS"].0, "4");
        assert_eq!(
            f.to_kconfig(),
            "CONFIG_KASAN=y\nCONFIG_NR_CPUS=4\n# CONFIG_SLUB_TINY is not set\nCONFIG_X=\"a b\"\n"
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        for (text, needle) in [
            ("CONFIG_A=y\nKASAN=y\n", "a.config:2"),
            ("CONFIG_A\n", "missing '='"),
            ("CONFIG_A=maybe\n", "expected y, m, n"),
            ("CONFIG_a-b=y\n", "not a Kconfig symbol"),
        ] {
            let err = format!("{:#}", frag(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn conflicts_across_files_name_both_places() {
        let mut f = frag("CONFIG_RUST=y\n").unwrap();
        let err = f.merge_text("\nCONFIG_RUST=n\n", Path::new("b.config")).unwrap_err().to_string();
        assert_eq!(err, "CONFIG_RUST is y at a.config:1 but n at b.config:2");
        f.merge_text("CONFIG_RUST=y\n", Path::new("c.config")).unwrap();
    }

    #[test]
    fn validation_lists_dropped_and_changed_options() {
        let f = frag("CONFIG_KASAN=y\nCONFIG_RUST=y\n# CONFIG_SLUB_TINY is not set\nCONFIG_NR_CPUS=4\n").unwrap();
        let dot = "CONFIG_RUST=y\n# CONFIG_KASAN is not set\nCONFIG_NR_CPUS=8\n";
        assert_eq!(
            f.missing_in(dot),
            vec![
                "CONFIG_KASAN: requested y (a.config:1), got n".to_string(),
                "CONFIG_NR_CPUS: requested 4 (a.config:4), got 8".to_string(),
            ]
        );
    }

    #[test]
    fn apply_replaces_old_lines() {
        let dir = tempfile::tempdir().unwrap();
        let dot = dir.path().join(".config");
        std::fs::write(&dot, "CONFIG_A=y\n# CONFIG_KASAN is not set\nCONFIG_SLUB_TINY=y\nCONFIG_B=m\n").unwrap();
        let f = frag("CONFIG_KASAN=y\n# CONFIG_SLUB_TINY is not set\n").unwrap();
        apply(&dot, &f).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dot).unwrap(),
            "CONFIG_A=y\nCONFIG_B=m\nCONFIG_KASAN=y\n# CONFIG_SLUB_TINY is not set\n"
        );
    }

    #[test]
    fn load_merges_files_in_order_and_locates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-b.config"), "CONFIG_B=y\n").unwrap();
        std::fs::write(dir.path().join("00-a.config"), "CONFIG_A=y\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a fragment\n").unwrap();
        let files = fragment_files(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect::<Vec<_>>(),
            ["00-a.config", "10-b.config"]
        );
        assert_eq!(Fragment::load(&files).unwrap().to_kconfig(), "CONFIG_A=y\nCONFIG_B=y\n");
        std::fs::write(dir.path().join("20-c.config"), "# more\n# CONFIG_A is not set\n").unwrap();
        let err = Fragment::load(&fragment_files(dir.path()).unwrap()).unwrap_err().to_string();
        assert!(err.contains("00-a.config:1") && err.contains("20-c.config:2"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(fragment_files(empty.path()).unwrap_err().to_string().contains("no *.config fragments"));
    }

    #[test]
    fn shipped_fragments_merge() {
        let dir = crate::paths::repo_root().join("kernels").join("configs");
        let f = Fragment::load(&fragment_files(&dir).unwrap()).unwrap();
        assert_eq!(f.options["KASAN"].0, "y");
        assert_eq!(f.options["HID_CP2112"].0, "y");
    }
}
