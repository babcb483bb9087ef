//! A virtio-i2c adapter for the guest, served from this process over vhost-user to QEMU's
//! `vhost-user-i2c-pci` (docs/protocols.md §4), with our I2C bus model (at24 EEPROMs) behind it;
//! and its plumbing into a running VM.
//!
//! The vhost-user protocol, guest memory and the virtqueue come from the rust-vmm crates
//! (`vhost-user-backend`, `vhost`, `virtio-queue`, `vm-memory`). What is ours: the device
//! (`devices::virtio_i2c`: chain shape, header, `FAIL_NEXT` groups, the bus), the copy of each
//! chain's bytes in and out of guest memory with explicit lengths ([`process_chain`]), and the
//! lifetime. `vhost-device-i2c` (rust-vmm's own daemon) is a binary that passes requests to a
//! host `/dev/i2c-N` and cannot serve a software bus, hence this.
//!
//! Lifetime, one plug cycle = one connection = one [`Backend`]: we listen in the VM's
//! directory, QEMU connects as the client at `chardev-add` (before `device_add`, whose
//! realize runs the vhost-user handshake synchronously), and a supervisor thread of ours
//! accepts, runs the `VhostUserDaemon` (its request thread plus the vring worker thread)
//! until QEMU hangs up or we [`Backend::close`] it, then drops it, which joins the worker.
//! [`Backend::join`] returns once all three threads are gone; no socket file is left. After a
//! stuck unplug (no `DEVICE_DELETED`) the device may still complete its removal later, so
//! [`VirtioI2c::unplug`] neither closes the backend nor removes the chardev: it hands the
//! device back ([`Lingering`]) and the root port stays claimed. A late removal does not end the
//! backend: QEMU keeps a vhost-user chardev, and its connection, after the device, so
//! [`VirtioI2c::reap`] removes the chardev once the late `DEVICE_DELETED` has come (the
//! testbed reaps before each plug); otherwise the threads end when QEMU exits, which
//! [`VirtioI2c::join`] waits for.
//!
//! What the guest sees:
//! * graceful (`device_del`): q35's root ports use ACPI PCI hotplug; the guest's acpiphp
//!   unbinds virtio-pci → `virtio_i2c_remove` → `i2c_del_adapter` (at24, its nvmem and any
//!   `/dev/i2c-N` go with it) and ejects; QEMU then deletes the device, emits
//!   `DEVICE_DELETED`; the vhost-user connection lasts until `chardev-remove`
//!   (`harness/tests/e2e_virtio_i2c.rs`).
//!   On vanilla 6.12 an open `/dev/i2c-N` holds up `i2c_del_adapter` (it waits for the
//!   adapter's last reference, as with the CP2112), so no `DEVICE_DELETED` arrives until it
//!   is closed, which `device_del` reports as `QmpError::UnplugStuck` (scenario
//!   `virtio-i2c-dev-held`; on resmgr the removal completes and the fd gets ENODEV).
//! * surprise (the backend goes away): QEMU only stops vhost; the PCI device and the guest's
//!   adapter stay. Requests already queued and new ones are never completed: Linux's
//!   `virtio_i2c_xfer` waits without a timeout (interruptibly), so an I2C user blocks until
//!   signalled. With the adapter idle a following `device_del` still completes (that is how
//!   the testbed cleans up after a surprise; `e2e_virtio_i2c`); with a transfer in flight the
//!   users hang in `i2c_transfer` and the removal in `kernfs_drain`, and no `DEVICE_DELETED`
//!   comes.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use devices::i2c::I2cBus;
use devices::virtio_i2c::{self, Adapter, Admission, Counters, Faults, Layout, OutHdr, Segment, IN_HDR_LEN, MAX_DESCRIPTORS, OUT_HDR_LEN, STATUS_ERR};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::run::qmp::QmpError;
use crate::run::vm::Vm;

/// QEMU's `vhost-user-i2c-pci` creates one queue of 4; Linux queues one chain per message.
const QUEUE_SIZE: usize = 1024;

/// How long QEMU may take to dial our socket after `chardev-add` returned (it connects during
/// the command, so in practice it is already waiting).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the backend's threads may take to end once the connection is gone.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// QEMU's device model.
pub const QEMU_DRIVER: &str = "vhost-user-i2c-pci";

/// The virtio features offered: the ring features Linux uses, the feature the Linux driver
/// requires (`VIRTIO_I2C_F_ZERO_LENGTH_REQUEST`) and vhost-user protocol features.
fn offered_features() -> u64 {
    use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | virtio_i2c::F_ZERO_LENGTH_REQUEST
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

type Memory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The `VhostUserBackend`: the adapter model and the guest memory QEMU gave us.
struct I2cBackend {
    adapter: Arc<Mutex<Adapter>>,
    mem: Mutex<Option<Memory>>,
    event_idx: AtomicBool,
    /// The session's control: a vanish fault closes the connection through it, and a reply
    /// delay ends early when the session does.
    control: Arc<Control>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostUserBackend for I2cBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *lock(&self.mem) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the worker thread cannot be told to end, and the daemon's drop could
        // not join it.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[VringRwLock], _thread: usize) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(usize::from(device_event)).filter(|_| device_event == 0) else {
            return Err(io::Error::other(format!("event for unknown queue {device_event}")));
        };
        if self.event_idx.load(Ordering::Relaxed) {
            // With EVENT_IDX the guest is not kicking while we drain: drain until no more
            // chains arrived after notifications were turned back on.
            loop {
                vring.disable_notification().map_err(io::Error::other)?;
                self.process_queue(vring)?;
                if !vring.enable_notification().map_err(io::Error::other)? {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}

impl I2cBackend {
    fn process_queue(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = lock(&self.mem).clone() else {
            return Err(io::Error::other("a queue kick before SET_MEM_TABLE"));
        };
        let mem = atomic.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(io::Error::other)?
            .collect();
        if chains.is_empty() {
            return Ok(());
        }
        let mut answered = 0;
        for chain in chains {
            let admission = lock(&self.adapter).admit();
            match admission {
                Admission::Serve(delay) => self.control.sleep(delay),
                Admission::Vanish => {
                    // This chain and the rest stay unanswered; QEMU sees the backend go.
                    self.control.close();
                    break;
                }
            }
            let head = chain.head_index();
            let used = process_chain(chain, &mem, &mut lock(&self.adapter));
            vring.add_used(head, used).map_err(io::Error::other)?;
            answered += 1;
        }
        if answered == 0 {
            return Ok(());
        }
        if !self.event_idx.load(Ordering::Relaxed) || vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

/// Serves one chain (one I2C message) and returns the used length. Every length comes from
/// the descriptors and is checked against the request layout before guest memory is touched;
/// guest memory that is not there makes the message fail, never a panic.
pub fn process_chain<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap<()>, adapter: &mut Adapter) -> u32
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    // One more than a request may have, to tell "too many" from "just right".
    let descs: Vec<_> = chain.take(MAX_DESCRIPTORS + 1).collect();
    let segments: Vec<Segment> = descs.iter().map(|d| Segment { writable: d.is_write_only(), len: d.len() }).collect();
    let hdr = descs.first().filter(|d| !d.is_write_only() && d.len() == OUT_HDR_LEN).and_then(|d| {
        let mut bytes = [0u8; OUT_HDR_LEN as usize];
        mem.read_slice(&mut bytes, d.addr()).ok().and_then(|()| OutHdr::decode(&bytes).ok())
    });
    // The status goes into the last descriptor if it is writable, whatever else is wrong.
    let status_at = descs.last().filter(|d| d.is_write_only() && d.len() >= IN_HDR_LEN).map(|d| d.addr());
    let fail = |adapter: &mut Adapter, hdr: Option<&OutHdr>| {
        adapter.malformed(hdr);
        match status_at {
            Some(at) if mem.write_slice(&[STATUS_ERR], at).is_ok() => IN_HDR_LEN,
            _ => 0,
        }
    };
    let (Ok(layout), Some(hdr)) = (Layout::of(&segments), hdr) else {
        return fail(adapter, hdr.as_ref());
    };
    let mut data = Vec::new();
    if let Layout::Write(len) = layout {
        data = vec![0; len as usize];
        if mem.read_slice(&mut data, descs[1].addr()).is_err() {
            return fail(adapter, Some(&hdr));
        }
    }
    let reply = adapter.execute(&hdr, layout, &data);
    let mut status = reply.status;
    let mut used = IN_HDR_LEN;
    if let (Layout::Read(_), virtio_i2c::STATUS_OK) = (layout, status) {
        if mem.write_slice(&reply.data, descs[1].addr()).is_ok() {
            used = layout.used_len();
        } else {
            status = STATUS_ERR;
        }
    }
    match status_at {
        Some(at) if mem.write_slice(&[status], at).is_ok() => used,
        _ => 0,
    }
}

/// Why a backend's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// QEMU hung up (device deleted, chardev removed, QEMU gone).
    PeerClosed,
    /// We closed it ([`Backend::close`]).
    Closed,
    /// Closed before QEMU ever connected.
    NeverConnected,
}

/// Shared between the supervisor thread and [`Backend`]'s handles.
struct Control {
    /// Set by `close`; the supervisor checks it before and after connecting.
    closing: AtomicBool,
    /// Set once the session is over (whoever ended it), so a reply delay stops early.
    ended: Mutex<bool>,
    ended_changed: std::sync::Condvar,
    /// Wakes the supervisor while it waits for QEMU's connection.
    wake: EventNotifier,
    /// The live connection, once there is one.
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Control {
    fn new() -> io::Result<(Control, EventConsumer)> {
        let (wake_rx, wake) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        let control = Control {
            closing: AtomicBool::new(false),
            ended: Mutex::new(false),
            ended_changed: std::sync::Condvar::new(),
            wake,
            connection: Mutex::new(None),
        };
        Ok((control, wake_rx))
    }

    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.wake.notify();
        if let Some(handle) = lock(&self.connection).as_ref() {
            handle.shutdown();
        }
        self.end();
    }

    /// The session is over: wakes a reply delay in the vring worker, which the daemon's drop
    /// joins.
    fn end(&self) {
        *lock(&self.ended) = true;
        self.ended_changed.notify_all();
    }

    /// A reply delay (a fault): `delay`, or less if the session ends first.
    fn sleep(&self, delay: Duration) {
        if delay.is_zero() {
            return;
        }
        let ended = lock(&self.ended);
        let _ = self.ended_changed.wait_timeout_while(ended, delay, |ended| !*ended);
    }
}

/// Closes a backend's connection from elsewhere (a surprise removal racing a guest workload).
#[derive(Clone)]
pub struct BackendControl(Arc<Control>);

impl BackendControl {
    pub fn close(&self) {
        self.0.close();
    }
}

/// One vhost-user-i2c backend session on its own threads.
pub struct Backend {
    thread: JoinHandle<Result<SessionEnd, String>>,
    control: Arc<Control>,
    adapter: Arc<Mutex<Adapter>>,
}

impl Backend {
    /// Starts serving `bus` to the first client of `listener` (QEMU). Returns at once; the
    /// supervisor thread waits up to [`ACCEPT_TIMEOUT`] for the connection.
    pub fn serve(listener: UnixListener, bus: I2cBus) -> io::Result<Backend> {
        let adapter = Arc::new(Mutex::new(Adapter::new(bus)));
        let (control, wake_rx) = Control::new()?;
        let control = Arc::new(control);
        let backend = Arc::new(I2cBackend { adapter: adapter.clone(), mem: Mutex::new(None), event_idx: AtomicBool::new(false), control: control.clone() });
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-i2c".into())
            .spawn(move || supervise(listener, backend, &thread_control, &wake_rx))?;
        Ok(Backend { thread, control, adapter })
    }

    pub fn control(&self) -> BackendControl {
        BackendControl(self.control.clone())
    }

    /// Closes the connection (QEMU sees the backend go away) or stops waiting for one.
    pub fn close(&self) {
        self.control.close();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// What the adapter did so far.
    pub fn counters(&self) -> Counters {
        lock(&self.adapter).counters()
    }

    /// Replaces the adapter's faults (see [`Faults`]).
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.adapter).set_faults(faults);
    }

    /// Waits for every thread of this backend to end (blocking).
    pub fn join(self) -> Result<SessionEnd> {
        match self.thread.join() {
            Ok(Ok(end)) => Ok(end),
            Ok(Err(e)) => Err(anyhow::anyhow!("vhost-user-i2c backend: {e}")),
            Err(_) => Err(anyhow::anyhow!("the vhost-user-i2c backend thread panicked")),
        }
    }

    /// [`Backend::join`] within `timeout` from async code; a thread still running then is told
    /// to close and gets one more second.
    pub async fn join_within(self, timeout: Duration) -> Result<SessionEnd> {
        let control = self.control.clone();
        let mut join = tokio::task::spawn_blocking(move || self.join());
        if let Ok(end) = tokio::time::timeout(timeout, &mut join).await {
            return end.context("joining the vhost-user-i2c backend")?;
        }
        control.close();
        match tokio::time::timeout(Duration::from_secs(1), &mut join).await {
            Ok(end) => end.context("joining the vhost-user-i2c backend")?,
            Err(_) => anyhow::bail!("the vhost-user-i2c backend did not end within {timeout:?}"),
        }
    }
}

/// The supervisor: wait for QEMU (or a close), run the daemon until the connection ends,
/// drop it (joining its worker thread).
fn supervise(listener: UnixListener, backend: Arc<I2cBackend>, control: &Control, wake: &EventConsumer) -> Result<SessionEnd, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    loop {
        if control.closing.load(Ordering::SeqCst) {
            return Ok(SessionEnd::NeverConnected);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("QEMU did not connect within {ACCEPT_TIMEOUT:?}"));
        }
        let wake_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(wake.as_raw_fd()) };
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(wake_fd, PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(1000) as u32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(_) if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for QEMU's connection: {e}")),
        }
    }
    listener.set_nonblocking(false).map_err(|e| e.to_string())?;
    let mut daemon = VhostUserDaemon::new("vhost-i2c-req".into(), backend, GuestMemoryAtomic::new(GuestMemoryMmap::new()))
        .map_err(|e| format!("creating the vhost-user daemon: {e}"))?;
    let mut listener = Listener::from(listener);
    daemon.start(&mut listener).map_err(|e| format!("accepting QEMU's connection: {e}"))?;
    drop(listener);
    *lock(&control.connection) = daemon.shutdown_handle();
    // A close that came in before the handle was published.
    if control.closing.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    let result = daemon.wait();
    control.end();
    *lock(&control.connection) = None;
    // Dropping the daemon drops its handler, which stops and joins the vring worker thread.
    drop(daemon);
    if control.closing.load(Ordering::SeqCst) {
        return Ok(SessionEnd::Closed);
    }
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(SessionEnd::PeerClosed),
        Err(e) => Err(format!("serving QEMU: {e}")),
    }
}

/// Makes chardev ids and socket names unique across plug cycles in this process.
static CYCLE: AtomicU64 = AtomicU64::new(0);

/// A `vhost-user-i2c-pci` plugged into one VM, on a root port, served by a [`Backend`].
pub struct VirtioI2c {
    id: String,
    chardev: String,
    port: String,
    backend: Backend,
    /// Where QEMU's events stood before our `device_del`: a late `DEVICE_DELETED` after it
    /// means a lingering device is gone (see [`VirtioI2c::reap`]).
    unplug_requested: Option<crate::run::qmp::EventCursor>,
}

impl VirtioI2c {
    /// Serves `bus` and plugs the device as qdev `id` on the root port `port`: listen,
    /// `chardev-add` (QEMU connects), `device_add vhost-user-i2c-pci` (QEMU runs the
    /// handshake). Returns once QEMU has the device; the guest binds it asynchronously.
    pub async fn plug(vm: &Vm, id: &str, port: &str, bus: I2cBus) -> Result<VirtioI2c> {
        let cycle = CYCLE.fetch_add(1, Ordering::Relaxed);
        let chardev = format!("{id}-vu{cycle}");
        let path = vm.dir().join(format!("{chardev}.sock"));
        let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let backend = Backend::serve(listener, bus).context("starting the vhost-user-i2c backend")?;
        let _unlink = Unlink(path.clone());
        if let Err(e) = vm.qmp().chardev_add_unix(&chardev, &path, false).await {
            backend.close();
            let _ = backend.join_within(JOIN_TIMEOUT).await;
            return Err(e).with_context(|| format!("chardev-add {chardev}"));
        }
        let props = [("chardev", serde_json::Value::from(chardev.clone()))];
        if let Err(e) = vm.qmp().device_add(QEMU_DRIVER, id, Some(port), &props).await {
            backend.close();
            let _ = vm.qmp().chardev_remove(&chardev).await;
            let _ = backend.join_within(JOIN_TIMEOUT).await;
            return Err(e).with_context(|| format!("device_add {QEMU_DRIVER} {id}"));
        }
        Ok(VirtioI2c { id: id.to_string(), chardev, port: port.to_string(), backend, unplug_requested: None })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The root port the device sits on.
    pub fn port(&self) -> &str {
        &self.port
    }

    pub fn counters(&self) -> Counters {
        self.backend.counters()
    }

    /// Replaces the backend's faults (a scenario's `fault:` step).
    pub fn set_faults(&self, faults: Faults) {
        self.backend.set_faults(faults);
    }

    /// Closes the backend's connection from elsewhere (a surprise removal mid-workload).
    pub fn control(&self) -> BackendControl {
        self.backend.control()
    }

    /// Makes the backend go away: QEMU stops vhost, the device and the guest's adapter stay
    /// (requests hang). The device is still plugged; [`VirtioI2c::unplug`] removes it.
    pub fn surprise(&self) {
        self.backend.close();
    }

    /// `device_del` and wait for `DEVICE_DELETED` within `timeout`, then `chardev-remove` (QEMU
    /// keeps a vhost-user chardev after its device) and join the backend. When QEMU may still
    /// have the device (no `DEVICE_DELETED`: [`QmpError::UnplugStuck`] in the error's chain; a
    /// failed command) it is handed back, still served: see [`Lingering`].
    pub async fn unplug(mut self, vm: &Vm, timeout: Duration) -> Result<SessionEnd, Lingering> {
        self.unplug_requested = Some(vm.qmp().cursor());
        let error = match vm.qmp().device_del(&self.id, timeout).await {
            Ok(_) => match vm.qmp().chardev_remove(&self.chardev).await {
                Ok(_) => return self.backend.join_within(JOIN_TIMEOUT).await.with_context(|| format!("after unplugging {}", self.id)).map_err(Lingering::gone),
                Err(e) => anyhow::Error::new(e).context(format!("chardev-remove {}", self.chardev)),
            },
            Err(e @ QmpError::UnplugStuck { .. }) => e.into(),
            Err(e) => anyhow::Error::new(e).context(format!("device_del {}", self.id)),
        };
        Err(Lingering { device: Some(self), error })
    }

    /// A lingering device whose removal QEMU has completed since (its late `DEVICE_DELETED`):
    /// removes its chardev — QEMU keeps a vhost-user chardev, and the connection, after its
    /// device — and joins the backend: `Ok` with how that went. `Err(self)` while QEMU may
    /// still have the device.
    pub async fn reap(self, vm: &Vm) -> Result<Result<SessionEnd>, VirtioI2c> {
        let Some(cursor) = self.unplug_requested else { return Err(self) };
        if !vm.qmp().events_since(cursor).iter().any(|e| crate::run::qmp::is_device_deleted(e, &self.id)) {
            return Err(self);
        }
        if let Err(e) = vm.qmp().chardev_remove(&self.chardev).await {
            return Ok(Err(anyhow::Error::new(e).context(format!("chardev-remove {} after the late removal of {}", self.chardev, self.id))));
        }
        let id = self.id;
        Ok(self.backend.join_within(JOIN_TIMEOUT).await.with_context(|| format!("after the late removal of {id}")))
    }

    /// Waits for the backend's threads once QEMU has exited (it hangs up on exit); one still
    /// running after [`JOIN_TIMEOUT`] is closed, and an error if even that does not end it.
    pub async fn join(self) -> Result<SessionEnd> {
        let id = self.id;
        self.backend.join_within(JOIN_TIMEOUT).await.with_context(|| format!("the backend of {id}"))
    }
}

/// A failed [`VirtioI2c::unplug`]: why, and the device when QEMU may still have it (its backend
/// still serves it: a late removal can still complete). Whoever keeps it joins its threads
/// with [`VirtioI2c::join`] after QEMU's exit.
pub struct Lingering {
    pub device: Option<VirtioI2c>,
    pub error: anyhow::Error,
}

impl Lingering {
    /// The device is gone from QEMU; only its backend's end failed.
    fn gone(error: anyhow::Error) -> Lingering {
        Lingering { device: None, error }
    }
}

/// Removes the socket file when the plug is done with it (QEMU has connected, or failed).
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use devices::at24::{At24, At24Kind};
    use devices::virtio_i2c::{FLAG_FAIL_NEXT, FLAG_M_RD, STATUS_OK};
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const HDR: u64 = 0x10_0000;
    const BUF: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn adapter() -> (Adapter, Arc<Mutex<At24>>) {
        let eeprom = Arc::new(Mutex::new(At24::new(At24Kind::C02)));
        eeprom.lock().unwrap().seed(0, &(0..=255).collect::<Vec<u8>>());
        let mut bus = I2cBus::new();
        bus.attach(0x50, Box::new(eeprom.clone())).unwrap();
        (Adapter::new(bus), eeprom)
    }

    fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
        let flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Writes the header, builds the chain in a fresh queue and serves it; returns the used
    /// length and the status byte.
    fn serve(mem: &GuestMemoryMmap<()>, adapter: &mut Adapter, hdr: [u8; 8], descs: &[RawDescriptor]) -> (u32, u8) {
        mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        mem.write_slice(&[0xee], GuestAddress(STATUS)).unwrap();
        let queue = MockSplitQueue::new(mem, 16);
        let chain = queue.build_desc_chain(descs).unwrap();
        let used = process_chain(chain, mem, adapter);
        let mut status = [0u8];
        mem.read_slice(&mut status, GuestAddress(STATUS)).unwrap();
        (used, status[0])
    }

    fn out_hdr(addr7: u16, flags: u32) -> [u8; 8] {
        OutHdr { addr: addr7 << 1, flags }.encode()
    }

    #[test]
    fn at24_read_as_linux_sends_it() {
        let mem = memory();
        let (mut a, _) = adapter();
        // [W 0x50: 0x10] with FAIL_NEXT, then [R 0x50: 4].
        mem.write_slice(&[0x10], GuestAddress(BUF)).unwrap();
        let (used, status) = serve(&mem, &mut a, out_hdr(0x50, FLAG_FAIL_NEXT), &[desc(HDR, 8, false), desc(BUF, 1, false), desc(STATUS, 1, true)]);
        assert_eq!((used, status), (1, STATUS_OK));
        let (used, status) = serve(&mem, &mut a, out_hdr(0x50, FLAG_M_RD), &[desc(HDR, 8, false), desc(BUF, 4, true), desc(STATUS, 1, true)]);
        assert_eq!((used, status), (5, STATUS_OK));
        let mut data = [0u8; 4];
        mem.read_slice(&mut data, GuestAddress(BUF)).unwrap();
        assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    }

    #[test]
    fn at24_write_lands_in_the_model() {
        let mem = memory();
        let (mut a, eeprom) = adapter();
        mem.write_slice(&[0x07, 0xa5], GuestAddress(BUF)).unwrap();
        let (used, status) = serve(&mem, &mut a, out_hdr(0x50, 0), &[desc(HDR, 8, false), desc(BUF, 2, false), desc(STATUS, 1, true)]);
        assert_eq!((used, status), (1, STATUS_OK));
        assert_eq!(eeprom.lock().unwrap().contents()[7], 0xa5);
    }

    #[test]
    fn zero_length_requests() {
        let mem = memory();
        let (mut a, _) = adapter();
        let chain = [desc(HDR, 8, false), desc(STATUS, 1, true)];
        assert_eq!(serve(&mem, &mut a, out_hdr(0x50, 0), &chain), (1, STATUS_OK));
        assert_eq!(serve(&mem, &mut a, out_hdr(0x50, FLAG_M_RD), &chain), (1, STATUS_OK));
        assert_eq!(serve(&mem, &mut a, out_hdr(0x51, 0), &chain), (1, STATUS_ERR));
        assert_eq!(a.counters().zero_length, 3);
    }

    #[test]
    fn malformed_chains_get_an_error_status_where_there_is_room() {
        let mem = memory();
        let (mut a, _) = adapter();
        let h = out_hdr(0x50, 0);
        // Header too short, header writable, status readable, four descriptors.
        assert_eq!(serve(&mem, &mut a, h, &[desc(HDR, 7, false), desc(STATUS, 1, true)]), (1, STATUS_ERR));
        assert_eq!(serve(&mem, &mut a, h, &[desc(HDR, 8, true), desc(STATUS, 1, true)]), (1, STATUS_ERR));
        assert_eq!(serve(&mem, &mut a, h, &[desc(HDR, 8, false), desc(STATUS, 1, false)]), (0, 0xee));
        let four = [desc(HDR, 8, false), desc(BUF, 1, false), desc(BUF, 1, false), desc(STATUS, 1, true)];
        assert_eq!(serve(&mem, &mut a, h, &four), (1, STATUS_ERR));
        // Read flag on a device-readable buffer.
        assert_eq!(serve(&mem, &mut a, out_hdr(0x50, FLAG_M_RD), &[desc(HDR, 8, false), desc(BUF, 1, false), desc(STATUS, 1, true)]), (1, STATUS_ERR));
        // A buffer outside guest memory.
        assert_eq!(serve(&mem, &mut a, out_hdr(0x50, FLAG_M_RD), &[desc(HDR, 8, false), desc(0x3f_fffe, 4, true), desc(STATUS, 1, true)]), (1, STATUS_ERR));
        assert_eq!(serve(&mem, &mut a, h, &[desc(HDR, 8, false), desc(0x50_0000, 4, false), desc(STATUS, 1, true)]), (1, STATUS_ERR));
        // All but the last two: their shape is right, guest memory is not there.
        assert_eq!(a.counters().malformed, 6);
    }

    proptest! {
        /// Arbitrary descriptors (directions, lengths, addresses in and out of guest memory)
        /// and header bytes: no panic, the used length never exceeds the writable room, and a
        /// chain of the wrong shape gets the error status wherever its last descriptor leaves
        /// room for it in guest memory. (The fuzz target `virtio_i2c` does the same with faults.)
        #[test]
        fn arbitrary_chains_never_panic(
            descs in proptest::collection::vec((prop_oneof![Just(HDR), Just(BUF), Just(STATUS), Just(0x3f_ffff), any::<u64>()], prop_oneof![0u32..300, any::<u32>()], any::<bool>()), 1..6),
            hdr in any::<[u8; 8]>(),
        ) {
            let mem = memory();
            let (mut a, _) = adapter();
            let raw: Vec<RawDescriptor> = descs.iter().map(|&(addr, len, w)| desc(addr, len, w)).collect();
            let room: u64 = descs.iter().filter(|d| d.2).map(|d| u64::from(d.1)).sum();
            mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
            let queue = MockSplitQueue::new(&mem, 16);
            let chain = queue.build_desc_chain(&raw).unwrap();
            // What the handler is given: the descriptors the queue yields, of which it looks at
            // one more than a request may have.
            let seen: Vec<_> = chain.clone().take(MAX_DESCRIPTORS + 1).collect();
            let used = process_chain(chain, &mem, &mut a);
            prop_assert!(u64::from(used) <= room);
            let segments: Vec<Segment> = seen.iter().map(|d| Segment { writable: d.is_write_only(), len: d.len() }).collect();
            let last = seen.last().copied().unwrap_or_else(|| raw[0].into());
            let mut status = [0u8];
            if Layout::of(&segments).is_err() && last.is_write_only() && last.len() >= 1 && mem.read_slice(&mut status, last.addr()).is_ok() {
                prop_assert_eq!((used, status[0]), (1, STATUS_ERR));
            }
        }
    }

    /// The queue handler carries out a vanish fault: three probes queued, the second starting
    /// the transfer the adapter vanishes at. The first is answered; the second and third get
    /// no used entry and no status; the session is closed.
    #[test]
    fn a_vanish_fault_leaves_the_rest_of_the_queue_unanswered() {
        use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let mut descs = Vec::new();
        for i in 0..3u16 {
            descs.push(RawDescriptor::from(SplitDescriptor::new(HDR, 8, VRING_DESC_F_NEXT as u16, 2 * i + 1)));
            descs.push(RawDescriptor::from(SplitDescriptor::new(STATUS + u64::from(i), 1, VRING_DESC_F_WRITE as u16, 0)));
        }
        mem.write_slice(&out_hdr(0x50, 0), GuestAddress(HDR)).unwrap();
        mem.write_slice(&[0xee; 3], GuestAddress(STATUS)).unwrap();
        queue.add_desc_chains(&descs, 0).unwrap();
        let vring = VringRwLock::new(GuestMemoryAtomic::new(mem.clone()), 16).unwrap();
        vring.set_queue_info(queue.desc_table_addr().0, queue.avail_addr().0, queue.used_addr().0).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_ready(true);
        let (control, _wake) = Control::new().unwrap();
        let backend = I2cBackend {
            adapter: Arc::new(Mutex::new(adapter().0)),
            mem: Mutex::new(Some(GuestMemoryAtomic::new(mem.clone()))),
            event_idx: AtomicBool::new(false),
            control: Arc::new(control),
        };
        lock(&backend.adapter).set_faults(Faults { vanish_at_transfer: Some(2), ..Faults::default() });
        backend.process_queue(&vring).unwrap();
        let used_idx: u16 = mem.read_obj(queue.used_addr().unchecked_add(2)).unwrap();
        let mut status = [0u8; 3];
        mem.read_slice(&mut status, GuestAddress(STATUS)).unwrap();
        assert_eq!((used_idx, status), (1, [STATUS_OK, 0xee, 0xee]));
        assert!(backend.control.closing.load(Ordering::SeqCst), "the session is closed");
        assert_eq!(backend.adapter.lock().unwrap().counters().transfers, 2);
    }

    /// A reply delay (up to an hour: a stalled backend) ends as soon as the session does, so
    /// closing never waits for it.
    #[test]
    fn a_reply_delay_ends_with_the_session() {
        let (control, _wake) = Control::new().unwrap();
        let control = Arc::new(control);
        let sleeper = {
            let control = control.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                control.sleep(Duration::from_secs(3600));
                start.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        control.close();
        assert!(sleeper.join().unwrap() < Duration::from_secs(60));
        // Once ended, a delay does not wait at all.
        let start = Instant::now();
        control.sleep(Duration::from_secs(3600));
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    /// This process's backend threads: ours (`vhost-i2c*`) and the daemon's vring worker.
    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("vhost-i2c") || comm.starts_with("vring"))
            .count()
    }

    fn listener() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vu.sock");
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        (dir, path, l)
    }

    /// Each way a session can end leaves no thread behind. (One test, so the thread count is
    /// not disturbed by a sibling running at the same time in this process.)
    #[test]
    fn sessions_end_cleanly_every_way() {
        let before = threads();
        assert_eq!(before, 0);
        // Closed before QEMU connects.
        let (_d, _p, l) = listener();
        let b = Backend::serve(l, I2cBus::new()).unwrap();
        b.close();
        assert_eq!(b.join().unwrap(), SessionEnd::NeverConnected);
        // The peer connects and hangs up.
        let (_d, path, l) = listener();
        let b = Backend::serve(l, I2cBus::new()).unwrap();
        let peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(peer);
        assert_eq!(b.join().unwrap(), SessionEnd::PeerClosed);
        // We close a live connection: the peer sees EOF.
        let (_d, path, l) = listener();
        let b = Backend::serve(l, I2cBus::new()).unwrap();
        let mut peer = std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(threads() >= 2, "supervisor and request thread while connected");
        b.close();
        assert_eq!(b.join().unwrap(), SessionEnd::Closed);
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut peer, &mut buf).unwrap(), 0);
        assert_eq!(threads(), before, "threads left behind");
    }
}
