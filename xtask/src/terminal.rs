//! Interactive shell: connects the user's terminal to the guest's `hvc0` shell socket.
//!
//! The terminal is put in raw mode (restored on every exit path by a guard) so keys like
//! Ctrl-C reach the guest shell instead of killing us. Ctrl-] detaches, as in telnet.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DETACH: u8 = 0x1d; // Ctrl-]

struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        // Not a terminal (piped input): nothing to change.
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Ok(RawMode { saved: None });
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting the terminal to raw mode")?;
        Ok(RawMode { saved: Some(saved) })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Runs until the guest closes the console, stdin ends, or the user presses Ctrl-].
pub async fn attach(socket: &Path) -> Result<()> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the guest shell at {}", socket.display()))?;
    let (mut from_guest, mut to_guest) = stream.into_split();
    eprintln!("unplug-torture: guest shell on hvc0; Ctrl-] to leave (the VM is then shut down)\r");
    let _raw = RawMode::enter()?;
    // A newline makes the shell print a fresh prompt for us.
    to_guest.write_all(b"\n").await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut key = [0u8; 1024];
    let mut out = [0u8; 4096];
    loop {
        tokio::select! {
            n = stdin.read(&mut key) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                if let Some(pos) = key[..n].iter().position(|&b| b == DETACH) {
                    to_guest.write_all(&key[..pos]).await?;
                    return Ok(());
                }
                to_guest.write_all(&key[..n]).await?;
            }
            n = from_guest.read(&mut out) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                stdout.write_all(&out[..n]).await?;
                stdout.flush().await?;
            }
        }
    }
}
