//! Plugging a device emulated in this process into a running VM through QEMU's `usb-redir`
//! (docs/protocols.md §1.5), and the three ways of taking it out again.
//!
//! QEMU is the socket client: we listen in the VM's private directory, `chardev-add` a fresh
//! client chardev (fresh ids per cycle: QEMU deletes the chardev together with the device on
//! `device_del`, and a surprise-closed one lingers until then), accept its connection, serve it
//! with [`devices::usbredir::driver`], then `device_add usb-redir` on the hot-added xHCI.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use devices::usbredir::driver::{self, Link, LinkControl, SessionEnd};
use devices::usbredir::UsbDevice;
use tokio::net::UnixListener;

use crate::run::qmp::QmpError;
use crate::drive::scenario::UnplugHow;
use crate::run::vm::{Vm, USB_BUS};

/// How long QEMU may take to dial the chardev socket after `chardev-add` returned.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the link's thread may take to end once QEMU deleted the device (it ends when
/// QEMU closes the socket, at once in practice).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes chardev ids and socket names unique across plug cycles in this process.
static CYCLE: AtomicU64 = AtomicU64::new(0);

/// A device behind `usb-redir`, plugged into one VM.
pub struct Redir {
    id: String,
    chardev: String,
    link: Link,
}

impl Redir {
    /// Serves `device` and plugs it as qdev `id`. Returns once QEMU has the device; the guest
    /// enumerates it asynchronously (wait on the console for that).
    pub async fn plug(vm: &mut Vm, id: &str, device: Box<dyn UsbDevice + Send>) -> Result<Redir> {
        vm.ensure_usb_controller().await?;
        let cycle = CYCLE.fetch_add(1, Ordering::Relaxed);
        let chardev = format!("{id}-ur{cycle}");
        let path = vm.dir().join(format!("{chardev}.sock"));
        let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
        vm.qmp().chardev_add_unix(&chardev, &path, false).await.with_context(|| format!("chardev-add {chardev}"))?;
        let stream = match accept(listener, path).await {
            Ok(stream) => stream,
            Err(e) => {
                let _ = vm.qmp().chardev_remove(&chardev).await;
                return Err(e);
            }
        };
        let link = driver::serve(stream, device).context("starting the usbredir link")?;
        let redir = Redir { id: id.to_string(), chardev, link };
        let mut props = vec![("chardev", serde_json::Value::from(redir.chardev.clone()))];
        if let Some(port) = vm.next_usb_port() {
            props.push(("port", port.into()));
        }
        if let Err(e) = vm.qmp().device_add("usb-redir", id, Some(USB_BUS), &props).await {
            // Nothing references the chardev yet: remove it and stop serving.
            redir.link.control().close();
            let _ = vm.qmp().chardev_remove(&redir.chardev).await;
            return Err(e).with_context(|| format!("device_add usb-redir {id}"));
        }
        Ok(redir)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Steers the live link (unplug/replug with `device_disconnect`, or close) from elsewhere,
    /// e.g. a scenario step racing a guest workload.
    pub fn control(&self) -> LinkControl {
        self.link.control()
    }

    /// True once the link has ended (QEMU closed it, or a protocol error, or a close).
    pub fn link_ended(&self) -> bool {
        self.link.is_finished()
    }

    /// Takes the device out.
    ///
    /// * `Graceful`: `device_del`, waiting for `DEVICE_DELETED` (a [`QmpError::UnplugStuck`]
    ///   in the chain if it never comes); QEMU closes the link.
    /// * `Surprise`: we close the socket; the guest sees a disconnect, QEMU keeps the qdev,
    ///   which is then deleted so the next cycle starts clean.
    /// * `Disconnect`: `device_disconnect` on the live link, then the same clean-up.
    ///
    /// Returns why the link ended.
    pub async fn unplug(self, vm: &Vm, how: UnplugHow, timeout: Duration) -> Result<SessionEnd> {
        match how {
            UnplugHow::Graceful => {}
            UnplugHow::Surprise => self.link.control().close(),
            UnplugHow::Disconnect => self.link.control().unplug(),
            UnplugHow::Unbind => anyhow::bail!("unbind is a guest-side driver action, not a usb-redir unplug"),
        }
        if how != UnplugHow::Graceful {
            // Give the guest the surprise on its own before QEMU tears down anything.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match vm.qmp().device_del(&self.id, timeout).await {
            Ok(_) => {}
            Err(e @ QmpError::UnplugStuck { .. }) => return Err(e.into()),
            Err(e) => return Err(e).with_context(|| format!("device_del {}", self.id)),
        }
        join_link(self.link, JOIN_TIMEOUT)
            .await
            .with_context(|| format!("after unplugging {}", self.id))
    }
}

/// Joins the link's thread within `timeout`. A thread still running then is told to close
/// and gets one more second; if it still has not ended it is left to end on its own (its
/// socket is closed) and the unplug reports it.
async fn join_link(link: Link, timeout: Duration) -> Result<SessionEnd> {
    let control = link.control();
    let mut join = tokio::task::spawn_blocking(move || link.join());
    if let Ok(end) = tokio::time::timeout(timeout, &mut join).await {
        return end.context("joining the usbredir link");
    }
    control.close();
    match tokio::time::timeout(Duration::from_secs(1), &mut join).await {
        Ok(end) => end.context("joining the usbredir link"),
        Err(_) => {
            anyhow::bail!("the usbredir link thread did not end within {timeout:?} of the unplug")
        }
    }
}

/// Waits for QEMU's connection; the socket file goes once accepted (the name is single-use).
/// (A listener that is never dialed times out after [`ACCEPT_TIMEOUT`].) The stream is handed
/// to the link's own thread, blocking.
async fn accept(listener: UnixListener, path: PathBuf) -> Result<std::os::unix::net::UnixStream> {
    let result = match tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await {
        Ok(Ok((stream, _))) => stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)).map_err(anyhow::Error::from),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("QEMU did not connect to {} within {ACCEPT_TIMEOUT:?}", path.display())),
    };
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// QEMU's dial is accepted, the socket name is gone, and the link's thread gets a blocking
    /// stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accept_hands_over_a_blocking_stream_and_removes_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let dial = std::thread::spawn({
            let path = path.clone();
            move || std::os::unix::net::UnixStream::connect(path).unwrap()
        });
        let stream = accept(listener, path.clone()).await.unwrap();
        let _qemu = dial.join().unwrap();
        assert!(!path.exists(), "the socket name is single-use");
        // Nothing to read: a blocking read waits out its timeout, a non-blocking one returns at once.
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let start = Instant::now();
        let read = std::io::Read::read(&mut &stream, &mut [0u8; 1]);
        assert!(read.is_err() && start.elapsed() >= Duration::from_millis(90), "{read:?} after {:?}", start.elapsed());
    }

    /// A link whose peer (QEMU) stays connected but silent: its thread would never end on
    /// its own; the join is still bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joining_a_link_that_does_not_end_is_bounded() {
        let (ours, _qemu) = std::os::unix::net::UnixStream::pair().unwrap();
        let link = driver::serve(ours, Box::new(devices::cp2112::Cp2112::new())).unwrap();
        let start = Instant::now();
        let joined = tokio::time::timeout(
            Duration::from_secs(10),
            join_link(link, Duration::from_millis(200)),
        )
        .await;
        assert!(joined.is_ok(), "join_link did not return");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
