//! Which file runs for a program name: the first match on `PATH`, as execvp finds it, else a
//! busybox applet.
//!
//! The image links only the applets called by path ([`agent::BUSYBOX_LINKS`]); the others are
//! listed at [`agent::BUSYBOX_APPLETS`] and run as `/bin/busybox` with the applet's name as
//! `argv[0]`, which is how busybox picks the applet. Busybox's own `sh` runs its applets
//! without links, so `sh -c` and the debug shell see every applet as before.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use agent::{BUSYBOX, BUSYBOX_APPLETS};

/// The `PATH` init gives the agent (the kernel gives init none), and the one used without any.
pub const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// A program to spawn: its file, and the `argv[0]` to give it when that is not the file's
/// own name (an applet run through busybox).
#[derive(Debug, PartialEq)]
pub struct Program {
    pub path: PathBuf,
    pub arg0: Option<String>,
}

impl Program {
    /// A command that runs it (`argv[0]` set for an applet); arguments are the caller's.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        if let Some(arg0) = &self.arg0 {
            cmd.arg0(arg0);
        }
        cmd
    }
}

/// Finds `program` on `path` (the agent's `PATH` when `None`), else among busybox's applets.
/// A name with a `/` is taken as it is. ENOENT when it is nowhere.
pub fn resolve(program: &str, path: Option<String>) -> io::Result<Program> {
    let path = path.or_else(|| std::env::var("PATH").ok()).unwrap_or_else(|| DEFAULT_PATH.into());
    resolve_in(program, &path, applets(), Path::new(BUSYBOX))
}

/// A command for the program `name` as [`resolve`] finds it on the agent's `PATH`; when it is
/// nowhere, the bare name, whose spawn then fails with ENOENT and says so.
pub fn command(name: &str) -> Command {
    match resolve(name, None) {
        Ok(program) => program.command(),
        Err(_) => Command::new(name),
    }
}

fn resolve_in(program: &str, path: &str, applets: &[String], busybox: &Path) -> io::Result<Program> {
    if program.contains('/') {
        return Ok(Program { path: PathBuf::from(program), arg0: None });
    }
    let on_path = std::env::split_paths(path).map(|dir| dir.join(program)).find(|candidate| {
        use std::os::unix::fs::PermissionsExt;
        candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    match on_path {
        Some(path) => Ok(Program { path, arg0: None }),
        None if applets.iter().any(|a| a == program) => {
            Ok(Program { path: busybox.to_path_buf(), arg0: Some(program.to_string()) })
        }
        None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
    }
}

/// The image's applet list, read once; empty without one (a host, a foreign image).
fn applets() -> &'static [String] {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    APPLETS.get_or_init(|| {
        std::fs::read_to_string(BUSYBOX_APPLETS)
            .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn path_wins_then_applets_then_enoent() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, sbin) = (dir.path().join("bin"), dir.path().join("sbin"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&sbin).unwrap();
        executable(&sbin.join("cat"));
        std::fs::write(bin.join("cat"), "not executable").unwrap();
        let busybox = dir.path().join("busybox");
        let path = format!("/nonexistent:{}:{}", bin.display(), sbin.display());
        let applets = vec!["cat".to_string(), "ls".to_string()];

        // On PATH: the first executable match, even when busybox has the applet too.
        let found = resolve_in("cat", &path, &applets, &busybox).unwrap();
        assert_eq!(found, Program { path: sbin.join("cat"), arg0: None });
        // Not on PATH but an applet: busybox, told which by argv[0].
        let applet = resolve_in("ls", &path, &applets, &busybox).unwrap();
        assert_eq!(applet, Program { path: busybox.clone(), arg0: Some("ls".into()) });
        // Neither.
        assert_eq!(resolve_in("nope", &path, &applets, &busybox).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        // A path is taken as given, applet or not.
        let given = resolve_in("./ls", &path, &applets, &busybox).unwrap();
        assert_eq!(given, Program { path: PathBuf::from("./ls"), arg0: None });
    }

    /// The real busybox, run the way the agent runs an applet it has no link for.
    #[test]
    fn an_applet_runs_through_busybox_by_its_argv0() {
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: install busybox-static (the image packs it)");
        let applets = vec!["echo".to_string()];
        let program = resolve_in("echo", "/nonexistent", &applets, Path::new(BUSYBOX)).unwrap();
        let out = program.command().arg("hello").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"hello\n");
    }
}
