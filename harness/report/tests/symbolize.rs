//! Symbolization against a real ELF with DWARF: a tiny C program built with `cc -g -O1`,
//! standing in for vmlinux (same DWARF, same symbol-table lookup, same inline expansion).

use std::path::Path;
use std::process::Command;

use object::{Object, ObjectSymbol};
use report::symbolize::{parse_frame, Symbolizer};

const PROGRAM: &str = r#"
static inline __attribute__((always_inline)) int helper(volatile int *p)
{
	return *p * 3;
}

__attribute__((noinline)) int leaf(volatile int *p)
{
	return helper(p) + 1;
}

__attribute__((noinline)) int caller(volatile int *p)
{
	return leaf(p) * 2 + 5;
}

int main(void)
{
	volatile int v = 1;
	return caller(&v);
}
"#;

/// Builds the program. A missing or failing C compiler fails the test: `cc` is what Rust links
/// this very test with, and the kernel build needs one too, so its absence is a broken host,
/// not a reason to pass untested.
fn build(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let bin = dir.join("prog");
    let status = Command::new("cc").args(["-g", "-O1", "-fno-omit-frame-pointer", "-o"]).arg(&bin).arg(&src).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "building the DWARF test program with cc: {status:?}");
    bin
}

fn symbol(bin: &Path, name: &str) -> (u64, u64) {
    let data = std::fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file.symbols().find(|s| s.name() == Ok(name)).unwrap_or_else(|| panic!("{name} not in symtab"));
    (sym.address(), sym.size())
}

#[test]
fn symbolizes_frames_with_inlines() {
    let dir = tempfile_dir();
    let bin = build(&dir);
    let mut sym = Symbolizer::new(&bin).expect("load ELF");
    sym.strip_root(&dir);

    // Some instruction of `leaf` comes from the inlined `helper`: as a RIP frame it must
    // expand to helper [inline] (line 4) followed by leaf itself (line 9).
    let (_, leaf_size) = symbol(&bin, "leaf");
    let expanded = (0..leaf_size).find_map(|off| {
        let line = format!("RIP: 0010:leaf+0x{off:x}/0x{leaf_size:x}");
        let out = sym.symbolize_text(&line);
        out.contains("[inline]").then_some(out)
    });
    let expanded = expanded.expect("an inlined instruction in leaf");
    let lines: Vec<&str> = expanded.lines().collect();
    assert_eq!(lines.len(), 2, "{expanded}");
    assert!(lines[0].contains("helper prog.c:4 [inline]"), "{expanded}");
    assert!(lines[1].starts_with("RIP: 0010:leaf+0x") && lines[1].ends_with("prog.c:9"), "{expanded}");

    // A return address inside `caller` (pc-1 lookup) lands on caller's own line.
    let (_, caller_size) = symbol(&bin, "caller");
    let found = (1..caller_size).any(|off| sym.symbolize_text(&format!(" caller+0x{off:x}/0x{caller_size:x}")).trim_end().ends_with("prog.c:14"));
    assert!(found, "no offset of caller resolved to prog.c:14");

    // Unknown functions and modules pass through untouched.
    let untouched = " nosuch_func+0x1/0x2\n at24_read+0x1/0x2 [at24]\nplain text\n";
    assert_eq!(sym.symbolize_text(untouched), untouched);
    let (frame, _) = parse_frame(" leaf+0x1/0x2").unwrap();
    assert!(!sym.resolve(&frame).is_empty());
}

/// A module as the kernel builds one: relocatable, functions in `.text` and `.init.text`
/// (both sections start at address 0 in the file), DWARF with relocations against them.
const MODULE: &str = r#"
__attribute__((noinline)) int in_text(volatile int *p)
{
	return *p * 7 + 1;
}

__attribute__((noinline, section(".init.text"))) int in_init(volatile int *p)
{
	return in_text(p) + 3;
}
"#;

#[test]
fn module_frames_resolve_in_their_own_section() {
    let dir = tempfile_dir().join("module");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("mod.c");
    std::fs::write(&src, MODULE).unwrap();
    let ko = dir.join("my-mod.ko");
    // A missing or failing cc fails the test, as in `build`.
    let status = Command::new("cc").args(["-c", "-g", "-O1", "-fno-omit-frame-pointer", "-o"]).arg(&ko).arg(&src).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "building the DWARF test module with cc: {status:?}");
    let (text_at, text_size) = symbol(&ko, "in_text");
    let (init_at, init_size) = symbol(&ko, "in_init");
    assert_eq!((text_at, init_at), (0, 0), "both functions start their section: the case that needs a layout");
    let mut sym = Symbolizer::new(&ko).expect("any ELF does as the kernel");
    sym.add_module("my_mod", &ko).expect("load the module");
    sym.strip_root(&dir);
    // The faulting instruction of each function is on its own line, whatever the other
    // section holds at the same offset.
    let line_of = |func: &str, off: u64, size: u64| {
        let out = sym.symbolize_text(&format!(" {func}+0x{off:x}/0x{size:x} [my_mod]"));
        let file_line = out.trim_end().rsplit(' ').next().unwrap().to_string();
        file_line.strip_prefix("mod.c:").and_then(|l| l.parse::<u32>().ok()).unwrap_or_else(|| panic!("{out}"))
    };
    // Lines 2-5 are in_text, 7-10 in_init.
    for off in 1..=text_size {
        assert!((2..=5).contains(&line_of("in_text", off, text_size)), "in_text+{off:#x}");
    }
    for off in 1..=init_size {
        assert!((7..=10).contains(&line_of("in_init", off, init_size)), "in_init+{off:#x}");
    }
}

#[test]
fn missing_vmlinux_is_a_clear_error() {
    let err = Symbolizer::new(Path::new("/nonexistent/vmlinux")).err().expect("error");
    assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
}

/// A fresh directory under the target dir (no tempfile dev-dependency needed).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("symbolize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
