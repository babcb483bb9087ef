//! Stack frames to `file:line`, with inlined frames expanded, using the DWARF of `vmlinux`
//! (and of modules) through `addr2line`; and the guilty file a maintainer should look at.
//!
//! A console frame is `func+0xoff/0xsize [module]`. The function's start comes from the
//! ELF symbol table (several local symbols may share a name; the one whose size matches
//! wins), `pc = start + off`, and since frames below the top are return addresses, the
//! call instruction is found at `pc - 1`. The `RIP:` frame is the faulting pc itself.
//! A module's `.ko` is a relocatable object: every section starts at address 0 and its DWARF
//! is unrelocated, so functions of `.text`, `.init.text` and `.exit.text` would resolve to
//! each other's lines. Modules are loaded as the kernel loads them: their allocated sections
//! laid out one after the other, function symbols at their section's address, and the
//! `.rela.debug_*` relocations applied to the DWARF against that layout.
//!
//! Output follows syzkaller's layout so reports look the same as syzbot's:
//!
//! ```text
//!  at24_base_client_dev drivers/misc/eeprom/at24.c:235 [inline]
//!  at24_read+0x1b/0x40 drivers/misc/eeprom/at24.c:452
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, RelocationKind, RelocationTarget, SymbolKind, SymbolSection};
use regex::Regex;

#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    // Not `#[source]`: the message already carries the cause, and error chains would
    // print it twice.
    #[error("{path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: not an object file: {error}")]
    Object { path: PathBuf, error: object::Error },
    #[error("{path}: cannot load debug info: {message}")]
    Dwarf { path: PathBuf, message: String },
}

/// One frame as printed on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRef {
    pub func: String,
    pub offset: u64,
    pub size: u64,
    pub module: Option<String>,
    /// The faulting instruction (`RIP:`/`pc :` line), not a return address.
    pub is_rip: bool,
}

fn frame_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?:\[<(?:(?:0x)?[0-9a-f]+)>\])?[ \t]+\(?(?:[0-9]+:)?([a-zA-Z0-9_.]+)\+0x([0-9a-f]+)/0x([0-9a-f]+)( ?\[([a-zA-Z0-9_.]+)( [^\]]*)?\])?\)?",
        )
        .expect("static regex")
    })
}

fn rip_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?:IP|NIP|pc |PC is at):? ").expect("static regex"))
}

/// Parses the frame on a report line, if there is one. The returned range is where the
/// `func+0xoff/0xsize [module]` text sits in the line.
pub fn parse_frame(line: &str) -> Option<(FrameRef, std::ops::Range<usize>)> {
    let caps = frame_re().captures(line)?;
    let whole = caps.get(0)?;
    let func = caps.get(1)?.as_str().to_string();
    let offset = u64::from_str_radix(caps.get(2)?.as_str(), 16).ok()?;
    let size = u64::from_str_radix(caps.get(3)?.as_str(), 16).ok()?;
    let module = caps.get(5).map(|m| m.as_str().to_string());
    let end = caps.get(4).or(caps.get(3)).map_or(whole.end(), |m| m.end());
    let start = caps.get(1)?.start();
    Some((FrameRef { func, offset, size, module, is_rip: rip_re().is_match(line) }, start..end))
}

/// A resolved source location; `inlined` frames were inlined into the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFrame {
    pub func: String,
    pub file: String,
    pub line: u32,
    pub inlined: bool,
}

/// DWARF of a relocated module, owned.
type ModuleReader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

enum Debug {
    /// A linked image (vmlinux): addr2line's own loader reads it as it is.
    Linked(Box<addr2line::Loader>),
    /// A relocatable object (a module): laid out and relocated by [`relocate`].
    Relocated(addr2line::Context<ModuleReader>),
}

struct Binary {
    debug: Debug,
    /// name → [(address, size)]
    symbols: HashMap<String, Vec<(u64, u64)>>,
}

/// Where a relocatable object's allocated sections are placed: one after the other from a
/// page up (0 stays unused), each at its alignment. Index = section index; `None` for
/// sections that are not loaded (DWARF, symbol tables), which keep address 0.
fn layout(file: &object::File) -> Vec<Option<u64>> {
    let mut bases = Vec::new();
    let mut next: u64 = 0x1000;
    for section in file.sections() {
        let index = section.index().0;
        if bases.len() <= index {
            bases.resize(index + 1, None);
        }
        let loaded = matches!(section.flags(), object::SectionFlags::Elf { sh_flags, .. } if sh_flags.contains(object::elf::SHF_ALLOC));
        if loaded && section.size() > 0 {
            let align = section.align().max(1);
            let base = next.div_ceil(align).saturating_mul(align);
            bases[index] = Some(base);
            next = base.saturating_add(section.size());
        }
    }
    bases
}

/// A symbol's address in `layout`: its value plus its section's base.
fn placed(bases: &[Option<u64>], symbol: &object::Symbol) -> u64 {
    let base = match symbol.section() {
        SymbolSection::Section(index) => bases.get(index.0).copied().flatten().unwrap_or(0),
        _ => 0,
    };
    base.wrapping_add(symbol.address())
}

/// The DWARF of a relocatable object with its absolute relocations applied against `bases`
/// (`R_X86_64_64`/`_32` into `.debug_info`, `.debug_line`, ...: addresses of code, offsets
/// into other DWARF sections). Relocations that do not fit their section are skipped.
fn relocate(file: &object::File, bases: &[Option<u64>]) -> Result<gimli::Dwarf<ModuleReader>, String> {
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<ModuleReader, String> {
        let Some(section) = file.section_by_name(id.name()) else {
            return Ok(ModuleReader::new(std::sync::Arc::from(&[][..]), endian));
        };
        let mut data = section.uncompressed_data().map_err(|e| format!("{}: {e}", id.name()))?.into_owned();
        for (offset, relocation) in section.relocations() {
            if relocation.kind() != RelocationKind::Absolute {
                continue;
            }
            let target = match relocation.target() {
                RelocationTarget::Symbol(index) => file.symbol_by_index(index).map_or(0, |sym| placed(bases, &sym)),
                RelocationTarget::Section(index) => bases.get(index.0).copied().flatten().unwrap_or(0),
                _ => 0,
            };
            let width = usize::from(relocation.size() / 8);
            let Some(at) = usize::try_from(offset).ok().filter(|at| at.checked_add(width).is_some_and(|end| end <= data.len())) else {
                continue;
            };
            let field = &mut data[at..at + width];
            let addend = if relocation.has_implicit_addend() { read_uint(field, endian) as i64 } else { relocation.addend() };
            write_uint(field, target.wrapping_add_signed(addend), endian);
        }
        Ok(ModuleReader::new(std::sync::Arc::from(data), endian))
    };
    gimli::Dwarf::load(load)
}

fn read_uint(field: &[u8], endian: gimli::RunTimeEndian) -> u64 {
    let mut bytes = [0u8; 8];
    let n = field.len().min(8);
    match endian {
        gimli::RunTimeEndian::Little => bytes[..n].copy_from_slice(&field[..n]),
        gimli::RunTimeEndian::Big => bytes[8 - n..].copy_from_slice(&field[..n]),
    }
    match endian {
        gimli::RunTimeEndian::Little => u64::from_le_bytes(bytes),
        gimli::RunTimeEndian::Big => u64::from_be_bytes(bytes),
    }
}

fn write_uint(field: &mut [u8], value: u64, endian: gimli::RunTimeEndian) {
    let n = field.len().min(8);
    match endian {
        gimli::RunTimeEndian::Little => field[..n].copy_from_slice(&value.to_le_bytes()[..n]),
        gimli::RunTimeEndian::Big => field[..n].copy_from_slice(&value.to_be_bytes()[8 - n..]),
    }
}

impl Binary {
    fn open(path: &Path) -> Result<Binary, SymbolizeError> {
        let data = std::fs::read(path).map_err(|error| SymbolizeError::Read { path: path.into(), error })?;
        let file = object::File::parse(&*data).map_err(|error| SymbolizeError::Object { path: path.into(), error })?;
        let dwarf_error = |message: String| SymbolizeError::Dwarf { path: path.into(), message };
        let relocatable = file.kind() == ObjectKind::Relocatable;
        let bases = if relocatable { layout(&file) } else { Vec::new() };
        let mut symbols: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for sym in file.symbols().chain(file.dynamic_symbols()) {
            if sym.kind() != SymbolKind::Text {
                continue;
            }
            if let Ok(name) = sym.name() {
                let address = if relocatable { placed(&bases, &sym) } else { sym.address() };
                symbols.entry(name.to_string()).or_default().push((address, sym.size()));
            }
        }
        let debug = if relocatable {
            let dwarf = relocate(&file, &bases).map_err(dwarf_error)?;
            Debug::Relocated(addr2line::Context::from_dwarf(dwarf).map_err(|e| dwarf_error(e.to_string()))?)
        } else {
            Debug::Linked(Box::new(addr2line::Loader::new(path).map_err(|e| dwarf_error(e.to_string()))?))
        };
        Ok(Binary { debug, symbols })
    }

    fn func_start(&self, func: &str, size: u64) -> Option<u64> {
        let candidates = self.symbols.get(func)?;
        candidates.iter().find(|(_, s)| *s == size).or(candidates.first()).map(|(addr, _)| *addr)
    }
}

/// Symbolizes frames of one kernel (vmlinux plus modules).
pub struct Symbolizer {
    kernel: Binary,
    modules: HashMap<String, Binary>,
    /// Stripped from file names so paths read `drivers/…` (build and source roots).
    roots: Vec<String>,
}

/// Folds "a/./b", "a//b" and "x/../b" (paths as Kbuild O= builds see them, "../linux/drivers/…"),
/// so a path is what MAINTAINERS lists once a root is stripped.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" if !parts.is_empty() => {}
            ".." if parts.last().is_some_and(|l| !matches!(*l, ".." | "")) => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    if parts == [""] {
        return "/".into();
    }
    parts.join("/")
}

/// `file` normalised, without the first of `roots` it starts with. Normalised first: a tree
/// whose objects live inside it (`<tree>/.objects`, Kbuild's relative srctree) names sources
/// "<tree>/.objects/../drivers/…".
fn relative_path(roots: &[String], file: &str) -> String {
    let path = normalize(file);
    for root in roots {
        if let Some(rest) = path.strip_prefix(root.as_str()) {
            return rest.to_string();
        }
    }
    path
}

impl Symbolizer {
    /// Loads `vmlinux` (any ELF with DWARF works; tests use a small C program).
    pub fn new(vmlinux: &Path) -> Result<Symbolizer, SymbolizeError> {
        Ok(Symbolizer { kernel: Binary::open(vmlinux)?, modules: HashMap::new(), roots: Vec::new() })
    }

    /// Adds a module's `.ko` for frames printed as `func+0x1/0x2 [name]` (`name` as the
    /// kernel prints it: `nvmem_holder` for `nvmem-holder.ko`).
    pub fn add_module(&mut self, name: &str, path: &Path) -> Result<(), SymbolizeError> {
        self.modules.insert(name.to_string(), Binary::open(path)?);
        Ok(())
    }

    /// Makes file names relative to `root` (the kernel source or `O=` build directory).
    pub fn strip_root(&mut self, root: &Path) {
        let mut root = normalize(&root.to_string_lossy());
        if !root.ends_with('/') {
            root.push('/');
        }
        self.roots.push(root);
    }

    /// Resolves one frame: inlined callees first, the frame's own function last. Empty
    /// when the function or its debug info is unknown.
    pub fn resolve(&self, frame: &FrameRef) -> Vec<SourceFrame> {
        let bin = match &frame.module {
            Some(m) => match self.modules.get(m) {
                Some(b) => b,
                None => return Vec::new(),
            },
            None => &self.kernel,
        };
        let Some(start) = bin.func_start(&frame.func, frame.size) else { return Vec::new() };
        let mut pc = start.wrapping_add(frame.offset);
        if !frame.is_rip {
            pc = pc.wrapping_sub(1);
        }
        let found = match &bin.debug {
            Debug::Linked(loader) => loader.find_frames(pc).ok().map(|frames| self.source_frames(frames, frame)),
            Debug::Relocated(context) => context.find_frames(pc).skip_all_loads().ok().map(|frames| self.source_frames(frames, frame)),
        };
        let mut out = found.unwrap_or_default();
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        out
    }

    /// addr2line's frames for one pc, innermost first, all marked inlined.
    fn source_frames<R: gimli::Reader>(&self, mut frames: addr2line::FrameIter<'_, R>, frame: &FrameRef) -> Vec<SourceFrame> {
        let mut out = Vec::new();
        while let Ok(Some(f)) = frames.next() {
            let func = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok().map(|s| s.into_owned()))
                .unwrap_or_else(|| frame.func.clone());
            let (file, line) = f.location.map_or((String::from("??"), 0), |l| {
                (self.clean_path(l.file.unwrap_or("??")), l.line.unwrap_or(0))
            });
            out.push(SourceFrame { func, file, line, inlined: true });
        }
        out
    }

    fn clean_path(&self, file: &str) -> String {
        relative_path(&self.roots, file)
    }

    /// Rewrites a report's text with `file:line` after every frame it can resolve, adding
    /// an `[inline]` line for each inlined callee. Unresolvable lines are kept as they are.
    pub fn symbolize_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() * 2);
        for line in text.lines() {
            let resolved = parse_frame(line).map(|(f, range)| (self.resolve(&f), range));
            match resolved {
                Some((frames, range)) if !frames.is_empty() => {
                    for sf in &frames {
                        if sf.inlined {
                            out.push_str(&line[..range.start]);
                            out.push_str(&format!("{} {}:{} [inline]", sf.func, sf.file, sf.line));
                        } else {
                            out.push_str(&line[..range.end]);
                            out.push_str(&format!(" {}:{}", sf.file, sf.line));
                            out.push_str(&line[range.end..]);
                        }
                        out.push('\n');
                    }
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Files that are never where the bug is: headers, generic library code, the sanitizers,
/// allocators, locking, scheduling and workqueue plumbing, and USB core's URB submission
/// (a WARNING there is the driver's fault).
const GUILTY_IGNORES: &[&str] = &[
    r".*\.h$", r"^lib/.*", r"^virt/lib/.*", r"^mm/kasan/.*", r"^mm/kmsan/.*", r"^kernel/kcov\.c",
    r"^mm/sl.b\.c", r"^mm/filemap\.c", r"^mm/memory\.c", r"^mm/percpu.*", r"^mm/vmalloc\.c",
    r"^mm/page_alloc\.c", r"^mm/mempool\.c", r"^mm/util\.c", r"^kernel/rcu/.*",
    r"^arch/.*/kernel/traps\.c", r"^arch/.*/kernel/unwind.*\.c", r"^arch/.*/mm/fault\.c",
    r"^arch/.*/kernel/stacktrace\.c", r"^kernel/locking/.*", r"^kernel/panic\.c",
    r"^kernel/printk/printk.*\.c", r"^kernel/softirq\.c", r"^kernel/kthread\.c",
    r"^kernel/sched/.*\.c", r"^kernel/stacktrace\.c", r"^kernel/time/timer\.c",
    r"^kernel/workqueue\.c", r"^fs/proc/generic\.c", r"^fs/seq_file\.c", r"^drivers/usb/core/urb\.c",
    r"^drivers/base/dd\.c", r"^drivers/base/core\.c", r"^drivers/base/devres\.c",
    // The BUG() every Rust panic ends in; the panic's own location comes first.
    r"^rust/helpers.*",
];

/// Lines that name a file for another reason than being on the crashing stack (lockdep's
/// "at:" lock sites, irq state tracing).
const GUILTY_LINE_IGNORE: &str = r"(hardirqs|softirqs)\s+last\s+(enabled|disabled)|,\s+at:\s+|^\s*#\d+:|^Register r\d+ information";

/// The first source file of a symbolized report that is not generic plumbing; falls back to
/// the first file at all, so a report always goes to someone.
pub fn guilty_file(symbolized: &str) -> Option<String> {
    static RES: OnceLock<(Regex, regex::RegexSet, Regex)> = OnceLock::new();
    let (file_re, ignores, line_ignore) = RES.get_or_init(|| {
        (
            Regex::new(r"([a-zA-Z0-9_\-\./]*[a-zA-Z0-9_\-]+\.(c|h|rs)):[0-9]+").expect("static"),
            regex::RegexSet::new(GUILTY_IGNORES).expect("static"),
            Regex::new(GUILTY_LINE_IGNORE).expect("static"),
        )
    });
    let mut first = None;
    for line in symbolized.lines() {
        let Some(caps) = file_re.captures(line) else { continue };
        let file = caps.get(1).map_or("", |m| m.as_str()).trim_start_matches("./");
        first.get_or_insert_with(|| file.to_string());
        if ignores.is_match(file) || line_ignore.is_match(line) {
            continue;
        }
        return Some(file.to_string());
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_before_roots_are_stripped() {
        assert_eq!(normalize("/c/src/t/.objects/../drivers/x.c"), "/c/src/t/drivers/x.c");
        assert_eq!(normalize("../linux/./drivers//x.c"), "../linux/drivers/x.c");
        assert_eq!(normalize("/.."), "/..");
        assert_eq!(normalize("/a/.."), "/");
        let roots: Vec<String> = ["/c/src/t/", "/c/src/base/linux/"].iter().map(|r| r.to_string()).collect();
        // Objects built in the tree, and objects a series copy took over from its base tree.
        assert_eq!(relative_path(&roots, "/c/src/t/.objects/../drivers/x.c"), "drivers/x.c");
        assert_eq!(relative_path(&roots, "/c/src/base/linux/.objects/../lib/y.c"), "lib/y.c");
        assert_eq!(relative_path(&roots, "/elsewhere/z.c"), "/elsewhere/z.c");
    }

    #[test]
    fn parses_frames() {
        let (f, r) = parse_frame(" at24_read+0x1b/0x40 [at24]").unwrap();
        assert_eq!(f, FrameRef { func: "at24_read".into(), offset: 0x1b, size: 0x40, module: Some("at24".into()), is_rip: false });
        assert_eq!(&" at24_read+0x1b/0x40 [at24]"[r], "at24_read+0x1b/0x40 [at24]");
        let (f, _) = parse_frame("RIP: 0010:at24_read+0x1b/0x40 drivers/misc/eeprom/at24.c:1").unwrap();
        assert!(f.is_rip);
        assert_eq!(f.module, None);
        let (f, _) = parse_frame(" [<ffffffff81000000>] foo.isra.0+0x1/0x2").unwrap();
        assert_eq!(f.func, "foo.isra.0");
        assert!(parse_frame("Call Trace:").is_none());
    }

    #[test]
    fn guilty_file_skips_plumbing() {
        let text = " kasan_report+0x1/0x2 mm/kasan/report.c:1\n mutex_lock+0x1/0x2 kernel/locking/mutex.c:2\n \
                    at24_read+0x1/0x2 drivers/misc/eeprom/at24.c:3\n";
        assert_eq!(guilty_file(text).as_deref(), Some("drivers/misc/eeprom/at24.c"));
        assert_eq!(guilty_file(" f+0x1/0x2 lib/x.c:1\n").as_deref(), Some("lib/x.c"));
        assert_eq!(guilty_file("nothing"), None);
    }
}
