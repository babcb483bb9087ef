//! Who to tell: the kernel's MAINTAINERS file, matched against a guilty file.
//!
//! A reimplementation of the part of `scripts/get_maintainer.pl -f FILE` that needs no git:
//! section entries `F:` (file patterns: `dir/` matches everything below, `*`/`?` are globs
//! within one path component, a bare directory name matches below it), `X:` (exclusions) and
//! `N:` (regex on the path). Matching sections are ranked most specific first, by the depth
//! of the pattern that matched, as get_maintainer does.

use std::path::Path;

use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct MaintainersError {
    path: std::path::PathBuf,
    error: std::io::Error,
}

/// One MAINTAINERS section.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Section {
    pub name: String,
    /// `M:` lines, e.g. `Bartosz Golaszewski <brgl@bgdev.pl>`.
    pub maintainers: Vec<String>,
    /// `R:` lines.
    pub reviewers: Vec<String>,
    /// `L:` lines (mailing lists).
    pub lists: Vec<String>,
    /// `S:` (Maintained, Supported, Odd Fixes, Orphan, …).
    pub status: Option<String>,
    #[serde(skip)]
    files: Vec<Pattern>,
    #[serde(skip)]
    excludes: Vec<Pattern>,
    #[serde(skip)]
    names: Vec<Regex>,
}

#[derive(Debug, Clone)]
struct Pattern {
    re: Regex,
    depth: usize,
}

impl Pattern {
    fn new(pat: &str) -> Option<Pattern> {
        let mut re = String::from("^");
        for c in pat.chars() {
            match c {
                '*' => re.push_str("[^/]*"),
                '?' => re.push_str("[^/]"),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        if pat.ends_with('/') {
            // Directory: everything below.
        } else if pat.contains(['*', '?']) {
            // A glob names files in one directory (get_maintainer compares slash counts).
            re.push('$');
        } else {
            // A file, or a directory given without the trailing slash (get_maintainer
            // checks the tree for that; a path that is a file never has children anyway).
            re.push_str("(?:$|/)");
        }
        Some(Pattern { re: Regex::new(&re).ok()?, depth: pat.trim_end_matches('/').split('/').count() })
    }
}

/// The parsed MAINTAINERS file.
#[derive(Debug, Clone, Default)]
pub struct Maintainers {
    sections: Vec<Section>,
}

impl Maintainers {
    /// Reads `<kernel_src>/MAINTAINERS`.
    pub fn load(kernel_src: &Path) -> Result<Maintainers, MaintainersError> {
        let path = kernel_src.join("MAINTAINERS");
        let text = std::fs::read(&path).map_err(|error| MaintainersError { path, error })?;
        Ok(Maintainers::parse(&String::from_utf8_lossy(&text)))
    }

    /// Parses MAINTAINERS text. The preamble before the first section and malformed entries
    /// are ignored: a section starts at a line that is not an `X:` entry after a blank line.
    pub fn parse(text: &str) -> Maintainers {
        let mut sections = Vec::new();
        let mut cur: Option<Section> = None;
        for line in text.lines() {
            let entry = line.as_bytes().get(1) == Some(&b':') && line.as_bytes()[0].is_ascii_uppercase();
            if line.trim().is_empty() {
                sections.extend(cur.take().filter(|s| !s.files.is_empty() || !s.names.is_empty()));
                continue;
            }
            if !entry {
                // A title line; anything after a title that is not an entry ends the
                // preamble's prose too (it has no entries, so it is dropped above).
                sections.extend(cur.take().filter(|s| !s.files.is_empty() || !s.names.is_empty()));
                cur = Some(Section { name: line.trim().to_string(), ..Section::default() });
                continue;
            }
            let Some(sec) = cur.as_mut() else { continue };
            let value = line[2..].trim();
            match &line[..1] {
                "M" => sec.maintainers.push(value.to_string()),
                "R" => sec.reviewers.push(value.to_string()),
                "L" => sec.lists.push(value.to_string()),
                "S" => sec.status = Some(value.to_string()),
                "F" => sec.files.extend(Pattern::new(value)),
                "X" => sec.excludes.extend(Pattern::new(value)),
                "N" => sec.names.extend(Regex::new(value).ok()),
                _ => {}
            }
        }
        sections.extend(cur.filter(|s| !s.files.is_empty() || !s.names.is_empty()));
        Maintainers { sections }
    }

    /// Sections responsible for `file` (a path relative to the source root), most specific
    /// first. The catch-all "THE REST" section comes last when nothing else matched better.
    pub fn lookup(&self, file: &str) -> Vec<&Section> {
        let mut hits: Vec<(usize, &Section)> = self
            .sections
            .iter()
            .filter(|s| !s.excludes.iter().any(|x| x.re.is_match(file)))
            .filter_map(|s| {
                let depth = s.files.iter().filter(|p| p.re.is_match(file)).map(|p| p.depth).max();
                // N: patterns are as specific as the file itself.
                let named = s.names.iter().any(|n| n.is_match(file)).then(|| file.split('/').count());
                depth.max(named).map(|d| (d, s))
            })
            .collect();
        hits.sort_by_key(|h| std::cmp::Reverse(h.0));
        hits.into_iter().map(|(_, s)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
List of maintainers
===================

Descriptions of section entries and preferred order
	M: *Mail* patches to: FullName <address@domain>

AT24 EEPROM DRIVER
M:	Bartosz Golaszewski <brgl@bgdev.pl>
L:	linux-i2c@vger.kernel.org
S:	Maintained
F:	Documentation/devicetree/bindings/eeprom/at24.yaml
F:	drivers/misc/eeprom/at24.c

I2C SUBSYSTEM
M:	Wolfram Sang <wsa+renesas@sang-engineering.com>
L:	linux-i2c@vger.kernel.org
S:	Maintained
F:	drivers/i2c/
X:	drivers/i2c/busses/

MISC EEPROM
F:	drivers/misc/eeprom/*

THE REST
M:	Linus Torvalds <torvalds@linux-foundation.org>
L:	linux-kernel@vger.kernel.org
S:	Buried alive in reporters
F:	*
F:	*/
";

    #[test]
    fn finds_most_specific_section() {
        let m = Maintainers::parse(SAMPLE);
        let names: Vec<&str> = m.lookup("drivers/misc/eeprom/at24.c").iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["AT24 EEPROM DRIVER", "MISC EEPROM", "THE REST"]);
        let at24 = m.lookup("drivers/misc/eeprom/at24.c")[0];
        assert_eq!(at24.maintainers, ["Bartosz Golaszewski <brgl@bgdev.pl>"]);
        assert_eq!(at24.lists, ["linux-i2c@vger.kernel.org"]);
        let i2c: Vec<&str> = m.lookup("drivers/i2c/i2c-core-base.c").iter().map(|s| s.name.as_str()).collect();
        assert_eq!(i2c, ["I2C SUBSYSTEM", "THE REST"]);
        let excluded: Vec<&str> = m.lookup("drivers/i2c/busses/i2c-cp2112.c").iter().map(|s| s.name.as_str()).collect();
        assert_eq!(excluded, ["THE REST"]);
        // `*` does not cross directories.
        assert!(m.lookup("drivers/misc/eeprom/sub/x.c").iter().all(|s| s.name != "MISC EEPROM"));
    }
}
