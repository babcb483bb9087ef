//! Holders: user-space consumers that keep a GPIO, nvmem, I2C or hidraw handle open across an
//! unplug and record what the kernel answers.
//!
//! Each holder runs on its own thread: open, one setup request (a line request, a watch, ...),
//! then a loop of one operation per `interval_ms` until its deadline, a release, or (without
//! `keep_going`) the first error that will not go away. It reports state changes only — the
//! first result of each op and every change of outcome, with how often the previous one
//! repeated — so a holder looping for a minute sends a handful of records, not thousands. A
//! call that never returns (stuck in the kernel) simply sends nothing more: the host judges
//! silence past the deadline as a hang.
//!
//! The in-kernel kinds (`gpio-virtuser*`, `nvmem-kernel`) hold no fd of ours: the agent sets
//! the kernel consumer up through configfs/debugfs, makes it use its handle by reading a
//! debugfs file per iteration (the kernel's errno comes back from that read), and tears it
//! down on release. `gpio-aggregator` is both: the aggregator holds the provider's
//! descriptors, and the agent uses them through a line request on the aggregated chip.
//!
//! The ioctl structs are the kernel UAPI layouts (include/uapi/linux/gpio.h, i2c-dev.h,
//! hidraw.h), `repr(C)` with their sizes checked in the tests.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent::{errno_name, ConsumerRecord, ErrorReply, HoldKind, HoldRequest, Reply};

/// Where a holder's records go (the port writer, wrapped as an `Event`).
pub type Sink = Arc<dyn Fn(ConsumerRecord) + Send + Sync>;

struct Held {
    stop: Arc<AtomicBool>,
    /// Tells the holder thread to close its fds (it waits for this after its loop ends).
    close: mpsc::Sender<()>,
    /// Signalled by the holder thread after it closed its fds.
    closed: mpsc::Receiver<()>,
}

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
static HOLDERS: Mutex<Option<HashMap<u64, Held>>> = Mutex::new(None);

/// Starts a holder; answers once its setup succeeded (or with the setup's error).
pub fn hold(req: HoldRequest, sink: Sink) -> Result<Reply, ErrorReply> {
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    let mut holder = Holder::open(handle, &req, sink)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed) = mpsc::channel();
    let (close, close_rx) = mpsc::channel::<()>();
    let flag = stop.clone();
    thread::Builder::new()
        .name(format!("holder-{handle}"))
        .spawn(move || {
            holder.run(&req, &flag);
            // The fds stay open past the loop until released: the close may come long after
            // the unplug (a late close), which is its own path through the kernel.
            let _ = close_rx.recv();
            holder.close();
            let _ = closed_tx.send(());
        })
        .map_err(|e| ErrorReply::io("starting a holder thread", &e))?;
    HOLDERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(handle, Held { stop, close, closed });
    Ok(Reply::Held { handle })
}

/// Stops a holder and waits up to `wait` until its fds are closed (a call stuck in the kernel
/// never returns; the release then reports it instead of hanging the request). The host picks
/// `wait`: under TCG a call that trips KASAN spends seconds printing reports on the serial
/// console, which is slow, not stuck.
pub fn release(handle: u64, wait: Duration) -> Result<Reply, ErrorReply> {
    let held = HOLDERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .remove(&handle)
        .ok_or_else(|| ErrorReply::msg(format!("no holder {handle}")))?;
    held.stop.store(true, Ordering::Relaxed);
    let _ = held.close.send(());
    match held.closed.recv_timeout(wait) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Reply::Done),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(ErrorReply::msg(format!("holder {handle} did not stop within {wait:?}: stuck in the kernel")))
        }
    }
}

/// The bitmap of a line request's lines `lines` (indices into the request, at most 64 of
/// them: a request of all 64 lines is a full mask, not a shift overflow).
fn line_bits(lines: std::ops::Range<usize>) -> u64 {
    lines.fold(0u64, |m, i| m | u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)).unwrap_or(0))
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One call's outcome as the state machine compares it: the op, and errno or revents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Errno(i32),
    Revents(i16),
}

struct Holder {
    handle: u64,
    kind: HoldKind,
    sink: Sink,
    /// The device node or file opened by path (user-space kinds).
    file: Option<File>,
    /// The consumer in the kernel (in-kernel kinds).
    kernel: Option<KernelConsumer>,
    /// The line-request fd for the GPIO kinds that get one.
    line: Option<OwnedFd>,
    /// Per op: last outcome and how often it repeated since it was reported.
    last: HashMap<&'static str, (Outcome, u64)>,
    /// An error that will not go away was seen (loop stops unless keep_going).
    permanent: bool,
    /// Output value toggled by `gpio-cdev`.
    toggle: bool,
}

impl Holder {
    fn open(handle: u64, req: &HoldRequest, sink: Sink) -> Result<Holder, ErrorReply> {
        let (file, kernel) = if req.kind == HoldKind::GpioAggregator {
            let (consumer, chip) = KernelConsumer::aggregate(req)?;
            match OpenOptions::new().read(true).write(true).open(&chip) {
                Ok(file) => (Some(file), Some(consumer)),
                Err(e) => {
                    consumer.release();
                    return Err(ErrorReply::io(format!("open the aggregated chip {chip}"), &e));
                }
            }
        } else if req.kind.in_kernel() {
            (None, Some(KernelConsumer::set_up(handle, req)?))
        } else {
            if !req.path.starts_with('/') {
                return Err(ErrorReply::msg(format!("path must be absolute: {:?}", req.path)));
            }
            let writable = !matches!(req.kind, HoldKind::Hidraw);
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&req.path)
                .map_err(|e| ErrorReply::io(format!("open {}", req.path), &e))?;
            (Some(file), None)
        };
        let mut holder = Holder {
            handle,
            kind: req.kind,
            sink,
            file,
            kernel,
            line: None,
            last: HashMap::new(),
            permanent: false,
            toggle: false,
        };
        holder.setup(req).map_err(|e| ErrorReply::io(format!("{:?} setup on {}", req.kind, req.path), &e))?;
        holder.report("open", Outcome::Ok, Some(0), 0, None);
        Ok(holder)
    }

    fn setup(&mut self, req: &HoldRequest) -> io::Result<()> {
        let fd = self.fd();
        match self.kind {
            HoldKind::GpioCdev | HoldKind::GpioEvent | HoldKind::GpioAggregator => {
                let mut lr = uapi::LineRequest::zeroed();
                let all: Vec<u32> = if self.kind == HoldKind::GpioAggregator {
                    // The aggregated chip numbers the forwarded lines from 0.
                    (0..u32::try_from(req.lines.len()).unwrap_or(0)).collect()
                } else {
                    req.lines.iter().chain(&req.outputs).copied().collect()
                };
                if all.is_empty() || all.len() > lr.offsets.len() {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                lr.offsets[..all.len()].copy_from_slice(&all);
                lr.num_lines = all.len() as u32;
                let consumer = format!("unplug-holder-{}", self.handle);
                let n = consumer.len().min(lr.consumer.len() - 1);
                lr.consumer[..n].copy_from_slice(&consumer.as_bytes()[..n]);
                lr.config.flags = uapi::FLAG_INPUT;
                if self.kind == HoldKind::GpioEvent {
                    lr.config.flags |= uapi::FLAG_EDGE_RISING | uapi::FLAG_EDGE_FALLING;
                }
                if !req.outputs.is_empty() {
                    let mask = line_bits(req.lines.len()..all.len());
                    lr.config.num_attrs = 1;
                    lr.config.attrs[0] = uapi::LineConfigAttribute {
                        attr: uapi::LineAttribute { id: uapi::ATTR_ID_FLAGS, padding: 0, value: uapi::FLAG_OUTPUT },
                        mask,
                    };
                }
                // SAFETY: lr is the kernel's struct gpio_v2_line_request, valid for the call.
                cvt(unsafe { libc::ioctl(fd, uapi::GPIO_V2_GET_LINE_IOCTL, &mut lr) })?;
                // SAFETY: on success the kernel stored a new fd we now own.
                self.line = Some(unsafe { OwnedFd::from_raw_fd(lr.fd) });
            }
            HoldKind::GpioChipWatch => {
                for &offset in &req.lines {
                    let mut info = uapi::LineInfo::zeroed();
                    info.offset = offset;
                    // SAFETY: info is the kernel's struct gpio_v2_line_info.
                    cvt(unsafe { libc::ioctl(fd, uapi::GPIO_V2_GET_LINEINFO_WATCH_IOCTL, &mut info) })?;
                }
            }
            HoldKind::I2cDev | HoldKind::I2cSmbus => {
                if req.addr.is_none() {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
            }
            HoldKind::NvmemSysfs | HoldKind::Hidraw => {}
            // Set up by KernelConsumer::set_up.
            HoldKind::GpioVirtuser | HoldKind::GpioVirtuserIrq | HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => {}
        }
        if self.kind == HoldKind::I2cSmbus {
            // SMBus has no address in the transfer: bind the fd to the client (FORCE: the
            // address is usually claimed by a kernel driver, the very one being unplugged).
            let addr = libc::c_ulong::from(req.addr.unwrap_or(0));
            // SAFETY: I2C_SLAVE_FORCE takes the address by value.
            cvt(unsafe { libc::ioctl(fd, uapi::I2C_SLAVE_FORCE, addr) })?;
        }
        Ok(())
    }

    fn run(&mut self, req: &HoldRequest, stop: &AtomicBool) {
        let start = Instant::now();
        let deadline = Duration::from_millis(req.deadline_ms);
        let interval = Duration::from_millis(req.interval_ms.max(1));
        let mut first = true;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < deadline {
            self.iterate(req, interval);
            if std::mem::take(&mut first) {
                // The handshake the host waits for before it unplugs: the holder's first use
                // returned (its outcome was recorded just before), so the unplug cannot
                // overtake a holder that never got going.
                self.report(agent::HOLDER_READY, Outcome::Ok, None, 0, None);
            }
            if self.permanent && !req.keep_going {
                break;
            }
            if !matches!(self.kind, HoldKind::GpioEvent | HoldKind::GpioChipWatch | HoldKind::Hidraw) {
                thread::sleep(interval);
            }
        }
        let why = if stop.load(Ordering::Relaxed) {
            "released"
        } else if self.permanent && !req.keep_going {
            "error"
        } else {
            "deadline"
        };
        self.flush();
        self.report("stopped", Outcome::Ok, None, 0, Some(why.to_string()));
    }

    /// One operation (or poll + read for the event kinds).
    fn iterate(&mut self, req: &HoldRequest, interval: Duration) {
        let fd = self.fd();
        match self.kind {
            HoldKind::GpioCdev | HoldKind::GpioAggregator => {
                let line = self.line_fd();
                let mut values =
                    uapi::LineValues { bits: 0, mask: line_bits(0..req.lines.len() + req.outputs.len()) };
                self.call("GPIO_V2_LINE_GET_VALUES_IOCTL", || {
                    // SAFETY: values is the kernel's struct gpio_v2_line_values.
                    unsafe { libc::ioctl(line, uapi::GPIO_V2_LINE_GET_VALUES_IOCTL, &mut values) as i64 }
                });
                if !req.outputs.is_empty() {
                    self.toggle = !self.toggle;
                    let out_mask = line_bits(req.lines.len()..req.lines.len() + req.outputs.len());
                    let mut set = uapi::LineValues { bits: if self.toggle { out_mask } else { 0 }, mask: out_mask };
                    self.call("GPIO_V2_LINE_SET_VALUES_IOCTL", || {
                        // SAFETY: as above.
                        unsafe { libc::ioctl(line, uapi::GPIO_V2_LINE_SET_VALUES_IOCTL, &mut set) as i64 }
                    });
                }
            }
            HoldKind::GpioEvent => {
                let line = self.line_fd();
                self.poll_then_read::<uapi::LineEvent>(line, interval, |e| {
                    format!("offset {} id {} seqno {} line_seqno {}", e.offset, e.id, e.seqno, e.line_seqno)
                });
            }
            HoldKind::GpioChipWatch => {
                self.poll_then_read::<uapi::LineInfoChanged>(fd, interval, |e| {
                    format!("offset {} event_type {} flags {:#x}", e.info.offset, e.event_type, e.info.flags)
                });
            }
            HoldKind::Hidraw => {
                let mut info = uapi::HidrawDevinfo { bustype: 0, vendor: 0, product: 0 };
                self.call("HIDIOCGRAWINFO", || {
                    // SAFETY: info is the kernel's struct hidraw_devinfo.
                    unsafe { libc::ioctl(fd, uapi::HIDIOCGRAWINFO, &mut info) as i64 }
                });
                self.poll_then_read::<[u8; 64]>(fd, interval, |r| to_hex(&r[..8]));
            }
            HoldKind::NvmemSysfs => {
                let mut buf = [0u8; 16];
                let mut got = 0;
                self.call("pread", || {
                    // SAFETY: buf is valid for its length.
                    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    got = usize::try_from(n).unwrap_or(0);
                    n as i64
                });
                if got > 0 {
                    self.call("pwrite", || {
                        // SAFETY: as above, the bytes just read written back in place.
                        unsafe { libc::pwrite(fd, buf.as_ptr().cast(), got, 0) as i64 }
                    });
                }
            }
            HoldKind::I2cDev => {
                let mut byte = 0u8;
                let mut msg =
                    uapi::I2cMsg { addr: req.addr.unwrap_or(0), flags: uapi::I2C_M_RD, len: 1, buf: &mut byte };
                let mut data = uapi::I2cRdwrData { msgs: &mut msg, nmsgs: 1 };
                self.call("I2C_RDWR", || {
                    // SAFETY: data points at one valid i2c_msg whose buffer is one byte.
                    unsafe { libc::ioctl(fd, uapi::I2C_RDWR, &mut data) as i64 }
                });
            }
            HoldKind::I2cSmbus => {
                let mut block = [0u8; 34];
                let mut data = uapi::I2cSmbusData {
                    read_write: uapi::I2C_SMBUS_READ,
                    command: 0,
                    size: uapi::I2C_SMBUS_BYTE_DATA,
                    data: block.as_mut_ptr(),
                };
                self.call("I2C_SMBUS", || {
                    // SAFETY: data points at a buffer the size of union i2c_smbus_data.
                    unsafe { libc::ioctl(fd, uapi::I2C_SMBUS, &mut data) as i64 }
                });
            }
            HoldKind::GpioVirtuser | HoldKind::GpioVirtuserIrq | HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => {
                let files = self.kernel.as_ref().map(KernelConsumer::use_files).unwrap_or_default();
                for (op, path) in files {
                    self.call(op, || read_debugfs(&path));
                }
                // gpio-virtuser's lines are outputs (gpio-virtuser-irq's are not): toggle them.
                if let (HoldKind::GpioVirtuser, Some(KernelConsumer::GpioVirtuser(v))) = (self.kind, &self.kernel) {
                    let files = v.line_files("value");
                    self.toggle = !self.toggle;
                    let value = if self.toggle { "1" } else { "0" };
                    for path in files {
                        self.call("gpiod_set_value", || write_debugfs(&path, value));
                    }
                }
            }
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    fn line_fd(&self) -> RawFd {
        self.line.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Waits up to `interval` for the fd to be readable, then reads one `T`. POLLHUP/POLLERR
    /// and EOF end the holder (unless keep_going), since the kernel will not take them back.
    fn poll_then_read<T: Copy>(&mut self, fd: RawFd, interval: Duration, describe: impl Fn(&T) -> String) {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let timeout = i32::try_from(interval.as_millis()).unwrap_or(i32::MAX);
        let t0 = Instant::now();
        // SAFETY: pfd is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout) };
        let latency = t0.elapsed();
        if rc < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno != libc::EINTR {
                self.outcome("poll", Outcome::Errno(errno), None, latency, None);
            }
            return;
        }
        if rc == 0 {
            return;
        }
        let bad = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL);
        if pfd.revents & !libc::POLLIN != 0 {
            self.outcome("poll", Outcome::Revents(pfd.revents), Some(i64::from(rc)), latency, None);
        }
        if bad != 0 {
            self.permanent = true;
        }
        if pfd.revents & libc::POLLIN == 0 {
            // Nothing readable: do not spin on a hung-up fd.
            thread::sleep(interval);
            return;
        }
        let mut buf = std::mem::MaybeUninit::<T>::zeroed();
        let t0 = Instant::now();
        // SAFETY: buf has room for size_of::<T>() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), std::mem::size_of::<T>()) };
        let latency = t0.elapsed();
        if n < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            self.outcome("read", Outcome::Errno(errno), None, latency, None);
        } else if n == 0 {
            self.permanent = true;
            self.outcome("read", Outcome::Ok, Some(0), latency, Some("EOF".into()));
        } else {
            // SAFETY: T is plain old data (integers and arrays); zeroed then partly filled.
            let value = unsafe { buf.assume_init() };
            // Every event read is reported: they are the point of these holders and are rare.
            self.flush_op("read");
            self.report("read", Outcome::Ok, Some(n as i64), latency.as_micros() as u64, Some(describe(&value)));
        }
    }

    /// Runs `f` (returning >= 0 or -errno, or -1 with errno set for raw ioctls) and records it.
    fn call(&mut self, op: &'static str, f: impl FnOnce() -> i64) {
        let t0 = Instant::now();
        let rc = f();
        let latency = t0.elapsed();
        let outcome = match rc {
            -1 => Outcome::Errno(io::Error::last_os_error().raw_os_error().unwrap_or(0)),
            rc if rc < 0 => Outcome::Errno(i32::try_from(-rc).unwrap_or(0)),
            _ => Outcome::Ok,
        };
        if let Outcome::Errno(errno) = outcome {
            if matches!(errno, libc::ENODEV | libc::EBADF | libc::ESHUTDOWN | libc::ENXIO) {
                self.permanent = true;
            }
        }
        self.outcome(op, outcome, (rc >= 0).then_some(rc), latency, None);
    }

    /// Reports `outcome` if it differs from the op's last one; otherwise counts a repeat.
    fn outcome(
        &mut self,
        op: &'static str,
        outcome: Outcome,
        ret: Option<i64>,
        latency: Duration,
        detail: Option<String>,
    ) {
        match self.last.get_mut(op) {
            Some((last, repeats)) if *last == outcome => *repeats += 1,
            _ => {
                let repeats = self.last.insert(op, (outcome, 0)).map_or(0, |(_, r)| r);
                self.send(op, outcome, ret, latency.as_micros() as u64, detail, repeats);
            }
        }
    }

    /// Reports how often the op's last outcome repeated since it was reported.
    fn flush_op(&mut self, op: &'static str) {
        if let Some((outcome, repeats)) = self.last.get_mut(op) {
            if *repeats > 0 {
                let (outcome, n) = (*outcome, std::mem::take(repeats));
                self.send(op, outcome, None, 0, Some("repeated".into()), n);
            }
        }
    }

    fn flush(&mut self) {
        let ops: Vec<&'static str> = self.last.keys().copied().collect();
        for op in ops {
            self.flush_op(op);
        }
    }

    fn report(&self, op: &str, outcome: Outcome, ret: Option<i64>, latency_us: u64, detail: Option<String>) {
        self.send(op, outcome, ret, latency_us, detail, 0);
    }

    fn send(
        &self,
        op: &str,
        outcome: Outcome,
        ret: Option<i64>,
        latency_us: u64,
        detail: Option<String>,
        repeats: u64,
    ) {
        let (errno, revents) = match outcome {
            Outcome::Ok => (None, None),
            Outcome::Errno(e) => (Some(e), None),
            Outcome::Revents(r) => (None, Some(r)),
        };
        (self.sink)(ConsumerRecord {
            holder: self.handle,
            kind: self.kind,
            op: op.to_string(),
            ret,
            errno,
            errno_name: errno.and_then(errno_name).map(str::to_string),
            revents,
            latency_us,
            mono_ns: mono_ns(),
            repeats,
            detail,
        });
    }

    /// Closes the line fd and the file (a late close when the device is already gone).
    fn close(self) {
        let Holder { handle, kind, sink, file, line, kernel, .. } = self;
        let t0 = Instant::now();
        drop(line);
        drop(file);
        // What the teardown of an in-kernel consumer refused, if anything.
        let failed = kernel.map(|k| k.release()).unwrap_or_default();
        let detail = (!failed.is_empty()).then(|| failed.join("; "));
        sink(ConsumerRecord {
            holder: handle,
            kind,
            op: "closed".into(),
            ret: Some(0),
            errno: None,
            errno_name: None,
            revents: None,
            latency_us: t0.elapsed().as_micros() as u64,
            mono_ns: mono_ns(),
            repeats: 0,
            detail,
        });
    }
}

const VIRTUSER_CONFIGFS: &str = "/sys/kernel/config/gpio-virtuser";
const VIRTUSER_DEBUGFS: &str = "/sys/kernel/debug/gpio-virtuser";
/// The connection id our gpio-virtuser devices request their lines under.
const VIRTUSER_CON_ID: &str = "hold";
/// The C nvmem holder (`kernels/modules/nvmem-holder`, both kernels) and its Rust twin (the
/// resmgr series' sample): module name, debugfs dir. Same interface.
const NVMEM_HOLDER: (&str, &str) = ("nvmem-holder", "/sys/kernel/debug/nvmem-holder");
const NVMEM_HOLDER_RS: (&str, &str) = ("rust_nvmem_holder", "/sys/kernel/debug/rust_nvmem_holder");
const AGGREGATOR_DRIVER: &str = "/sys/bus/platform/drivers/gpio-aggregator";
const PLATFORM_DEVICES: &str = "/sys/bus/platform/devices";

/// An in-kernel consumer the agent set up and drives.
enum KernelConsumer {
    GpioVirtuser(Virtuser),
    /// A holder of the nvmem-holder module (`HOLDER/` in its debugfs dir) owning one
    /// reference to an nvmem device.
    NvmemHolder { dir: &'static str, name: String },
    /// A gpio-aggregator platform device (`gpio-aggregator.N`).
    Aggregator { device: String },
}

/// A gpio-virtuser device (configfs dir) with one entry per requested line.
struct Virtuser {
    configfs: String,
    /// Its debugfs dir, once it is live.
    debugfs: String,
    /// Entries created so far.
    entries: usize,
}

impl KernelConsumer {
    fn set_up(handle: u64, req: &HoldRequest) -> Result<KernelConsumer, ErrorReply> {
        match req.kind {
            HoldKind::GpioVirtuser | HoldKind::GpioVirtuserIrq => {
                if req.lines.is_empty() || req.path.is_empty() || req.path.contains('\n') {
                    return Err(ErrorReply::msg(format!(
                        "{} needs a chip (its /dev node or label) as path and at least one line (got {:?}, {:?})",
                        req.kind.name(),
                        req.path,
                        req.lines
                    )));
                }
                let mut virtuser =
                    Virtuser { configfs: format!("{VIRTUSER_CONFIGFS}/holder-{handle}"), debugfs: String::new(), entries: 0 };
                match virtuser.build(req) {
                    Ok(()) => Ok(KernelConsumer::GpioVirtuser(virtuser)),
                    Err(e) => {
                        // Leave no half-built device behind.
                        virtuser.release();
                        Err(e)
                    }
                }
            }
            HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => {
                let (module, dir) = if req.kind == HoldKind::NvmemKernel { NVMEM_HOLDER } else { NVMEM_HOLDER_RS };
                if !std::path::Path::new(dir).exists() {
                    let status = std::process::Command::new("modprobe").arg(module).status();
                    if !status.as_ref().is_ok_and(|s| s.success()) {
                        return Err(ErrorReply::msg(format!(
                            "modprobe {module} failed ({status:?}): is the module in the image (nvmem-kernel-rs needs the resmgr kernel)?"
                        )));
                    }
                }
                if req.path.is_empty() || req.path.contains(char::is_whitespace) {
                    return Err(ErrorReply::msg(format!("nvmem-kernel needs an nvmem device name as path (got {:?})", req.path)));
                }
                let name = format!("holder-{handle}");
                std::fs::write(format!("{dir}/get"), format!("{name} {}", req.path))
                    .map_err(|e| ErrorReply::io(format!("{module} get {name} {:?}", req.path), &e))?;
                Ok(KernelConsumer::NvmemHolder { dir, name })
            }
            kind => Err(ErrorReply::msg(format!("{} is not an in-kernel holder kind", kind.name()))),
        }
    }

    /// Creates a gpio-aggregator of `req.lines` of chip `req.path`; returns it and the
    /// aggregated chip's `/dev` node.
    fn aggregate(req: &HoldRequest) -> Result<(KernelConsumer, String), ErrorReply> {
        if req.lines.is_empty() {
            return Err(ErrorReply::msg("gpio-aggregator needs at least one line"));
        }
        let label = chip_key(&req.path)?;
        let offsets: Vec<String> = req.lines.iter().map(u32::to_string).collect();
        let aggregators = || -> Vec<String> {
            std::fs::read_dir(PLATFORM_DEVICES)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| n.starts_with("gpio-aggregator."))
                        .collect()
                })
                .unwrap_or_default()
        };
        let before = aggregators();
        std::fs::write(format!("{AGGREGATOR_DRIVER}/new_device"), format!("{label} {}", offsets.join(",")))
            .map_err(|e| ErrorReply::io(format!("gpio-aggregator new_device {label:?} {offsets:?}"), &e))?;
        let Some(device) = aggregators().into_iter().find(|n| !before.contains(n)) else {
            return Err(ErrorReply::msg("gpio-aggregator new_device made no new platform device"));
        };
        let consumer = KernelConsumer::Aggregator { device: device.clone() };
        // The aggregated chip appears under the device once the aggregator has probed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let chip = std::fs::read_dir(format!("{PLATFORM_DEVICES}/{device}")).ok().and_then(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok()).find(|n| n.starts_with("gpiochip"))
            });
            if let Some(chip) = chip {
                return Ok((consumer, format!("/dev/{chip}")));
            }
            if Instant::now() > deadline {
                consumer.release();
                return Err(ErrorReply::msg(format!(
                    "{device} has no gpiochip after 5 s: the aggregator did not get lines {offsets:?} of {label:?}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The debugfs files one iteration reads, each named by the kernel call it makes.
    fn use_files(&self) -> Vec<(&'static str, String)> {
        match self {
            KernelConsumer::GpioVirtuser(v) => v.line_files("value").into_iter().map(|f| ("gpiod_get_value", f)).collect(),
            KernelConsumer::NvmemHolder { dir, name } => vec![("nvmem_device_read", format!("{dir}/{name}/read"))],
            // Used through the line request on the aggregated chip instead.
            KernelConsumer::Aggregator { .. } => Vec::new(),
        }
    }

    /// Releases the kernel's handle (`live=0`, nvmem-holder's `put`, `delete_device`) and
    /// removes what set-up created; returns what failed.
    fn release(&self) -> Vec<String> {
        match self {
            KernelConsumer::GpioVirtuser(v) => v.release(),
            KernelConsumer::NvmemHolder { dir, name } => {
                attempts([(format!("{dir}/put {name}"), std::fs::write(format!("{dir}/put"), name.as_str()))])
            }
            KernelConsumer::Aggregator { device } => attempts([(
                format!("delete_device {device}"),
                std::fs::write(format!("{AGGREGATOR_DRIVER}/delete_device"), device.as_str()),
            )]),
        }
    }
}

impl Virtuser {
    /// Creates the configfs groups, requests the lines (`live=1`) and, for
    /// `gpio-virtuser-irq`, their IRQs; the others become outputs, so each iteration can
    /// toggle them as well as read them.
    fn build(&mut self, req: &HoldRequest) -> Result<(), ErrorReply> {
        let step = |what: &str, r: io::Result<()>| r.map_err(|e| ErrorReply::io(what.to_string(), &e));
        let configfs = self.configfs.clone();
        let label = chip_key(&req.path)?;
        step(&format!("mkdir {configfs}"), std::fs::create_dir(&configfs))?;
        step("gpio-virtuser connection", std::fs::create_dir(format!("{configfs}/{VIRTUSER_CON_ID}")))?;
        for (i, offset) in req.lines.iter().enumerate() {
            let entry = format!("{configfs}/{VIRTUSER_CON_ID}/{i}");
            step(&format!("mkdir {entry}"), std::fs::create_dir(&entry))?;
            self.entries = i + 1;
            step(&format!("{entry}/key"), std::fs::write(format!("{entry}/key"), &label))?;
            step(&format!("{entry}/offset"), std::fs::write(format!("{entry}/offset"), offset.to_string()))?;
        }
        step("gpio-virtuser live=1 (requests the lines)", std::fs::write(format!("{configfs}/live"), "1"))?;
        let dev = std::fs::read_to_string(format!("{configfs}/dev_name"))
            .map_err(|e| ErrorReply::io("gpio-virtuser dev_name", &e))?;
        self.debugfs = format!("{VIRTUSER_DEBUGFS}/{}", dev.trim());
        let (attr, value, call) = if req.kind == HoldKind::GpioVirtuserIrq {
            ("interrupts", "1", "request_irq")
        } else {
            ("direction", "output-low", "gpiod_direction_output")
        };
        for path in self.line_files(attr) {
            step(&format!("{call} through {path}"), std::fs::write(&path, value))?;
        }
        Ok(())
    }

    /// The debugfs attribute `attr` of each line.
    fn line_files(&self, attr: &str) -> Vec<String> {
        (0..self.entries).map(|i| format!("{}/gpiod:{VIRTUSER_CON_ID}:{i}/{attr}", self.debugfs)).collect()
    }

    /// `live=0` (when it got that far), then the configfs groups, innermost first.
    fn release(&self) -> Vec<String> {
        let configfs = &self.configfs;
        let mut steps = Vec::new();
        if std::path::Path::new(&format!("{configfs}/live")).exists() {
            steps.push(("live=0".to_string(), std::fs::write(format!("{configfs}/live"), "0")));
        }
        for i in (0..self.entries).rev() {
            steps.push((format!("rmdir entry {i}"), std::fs::remove_dir(format!("{configfs}/{VIRTUSER_CON_ID}/{i}"))));
        }
        steps.push(("rmdir connection".into(), std::fs::remove_dir(format!("{configfs}/{VIRTUSER_CON_ID}"))));
        steps.push(("rmdir device".into(), std::fs::remove_dir(configfs)));
        attempts(steps)
    }
}

/// What failed among teardown steps that were all attempted.
fn attempts(steps: impl IntoIterator<Item = (String, io::Result<()>)>) -> Vec<String> {
    steps.into_iter().filter_map(|(what, r)| r.err().map(|e| format!("{what}: {e}"))).collect()
}

/// How gpio-virtuser and gpio-aggregator name a chip: its label (looked up from a `/dev`
/// node), or the label as given.
fn chip_key(path: &str) -> Result<String, ErrorReply> {
    if path.starts_with('/') {
        chip_label(path)
    } else {
        Ok(path.to_string())
    }
}

/// The label of the GPIO chip whose character device is `path`.
fn chip_label(path: &str) -> Result<String, ErrorReply> {
    let chip = File::open(path).map_err(|e| ErrorReply::io(format!("open {path}"), &e))?;
    // SAFETY: all fields are integers or arrays of them; zero is valid.
    let mut info: uapi::ChipInfo = unsafe { std::mem::zeroed() };
    // SAFETY: info is the kernel's struct gpiochip_info.
    cvt(unsafe { libc::ioctl(chip.as_raw_fd(), uapi::GPIO_GET_CHIPINFO_IOCTL, &mut info) })
        .map_err(|e| ErrorReply::io(format!("GPIO_GET_CHIPINFO_IOCTL on {path}"), &e))?;
    let len = info.label.iter().position(|&b| b == 0).unwrap_or(info.label.len());
    Ok(String::from_utf8_lossy(&info.label[..len]).into_owned())
}

/// Writes a debugfs attribute: 0, or -errno.
fn write_debugfs(path: &str, data: &str) -> i64 {
    match std::fs::write(path, data) {
        Ok(()) => 0,
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Reads a debugfs attribute from a fresh open (gpio-virtuser's files refuse `pread`):
/// its length, or -errno. nvmem-holder reports a failed read as a negative number in the text.
fn read_debugfs(path: &str) -> i64 {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(n) if n < 0 => n,
            _ => text.len() as i64,
        },
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kernel UAPI layouts and ioctl numbers (x86_64).
mod uapi {
    use std::mem::size_of;

    const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
        (dir << 30 | (size as u64) << 16 | (ty as u64) << 8 | nr as u64) as libc::c_ulong
    }
    const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
        ioc(3, ty, nr, size)
    }
    const fn ior(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
        ioc(2, ty, nr, size)
    }

    pub const FLAG_INPUT: u64 = 1 << 2;
    pub const FLAG_OUTPUT: u64 = 1 << 3;
    pub const FLAG_EDGE_RISING: u64 = 1 << 4;
    pub const FLAG_EDGE_FALLING: u64 = 1 << 5;
    pub const ATTR_ID_FLAGS: u32 = 1;

    /// `struct gpio_v2_line_attribute` (the union as its u64 member).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineAttribute {
        pub id: u32,
        pub padding: u32,
        pub value: u64,
    }

    /// `struct gpio_v2_line_config_attribute`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineConfigAttribute {
        pub attr: LineAttribute,
        pub mask: u64,
    }

    /// `struct gpio_v2_line_config`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineConfig {
        pub flags: u64,
        pub num_attrs: u32,
        pub padding: [u32; 5],
        pub attrs: [LineConfigAttribute; 10],
    }

    /// `struct gpio_v2_line_request`.
    #[repr(C)]
    pub struct LineRequest {
        pub offsets: [u32; 64],
        pub consumer: [u8; 32],
        pub config: LineConfig,
        pub num_lines: u32,
        pub event_buffer_size: u32,
        pub padding: [u32; 5],
        pub fd: i32,
    }

    /// `struct gpio_v2_line_values`.
    #[repr(C)]
    pub struct LineValues {
        pub bits: u64,
        pub mask: u64,
    }

    /// `struct gpio_v2_line_info`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineInfo {
        pub name: [u8; 32],
        pub consumer: [u8; 32],
        pub offset: u32,
        pub num_attrs: u32,
        pub flags: u64,
        pub attrs: [LineAttribute; 10],
        pub padding: [u32; 4],
    }

    /// `struct gpio_v2_line_info_changed`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineInfoChanged {
        pub info: LineInfo,
        pub timestamp_ns: u64,
        pub event_type: u32,
        pub padding: [u32; 5],
    }

    /// `struct gpio_v2_line_event`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct LineEvent {
        pub timestamp_ns: u64,
        pub id: u32,
        pub offset: u32,
        pub seqno: u32,
        pub line_seqno: u32,
        pub padding: [u32; 6],
    }

    /// `struct gpiochip_info`.
    #[repr(C)]
    pub struct ChipInfo {
        pub name: [u8; 32],
        pub label: [u8; 32],
        pub lines: u32,
    }

    /// `struct i2c_msg`.
    #[repr(C)]
    pub struct I2cMsg {
        pub addr: u16,
        pub flags: u16,
        pub len: u16,
        pub buf: *mut u8,
    }

    /// `struct i2c_rdwr_ioctl_data`.
    #[repr(C)]
    pub struct I2cRdwrData {
        pub msgs: *mut I2cMsg,
        pub nmsgs: u32,
    }

    /// `struct i2c_smbus_ioctl_data` (`data` points at a 34-byte `union i2c_smbus_data`).
    #[repr(C)]
    pub struct I2cSmbusData {
        pub read_write: u8,
        pub command: u8,
        pub size: u32,
        pub data: *mut u8,
    }

    /// `struct hidraw_devinfo`.
    #[repr(C)]
    pub struct HidrawDevinfo {
        pub bustype: u32,
        pub vendor: i16,
        pub product: i16,
    }

    pub const I2C_M_RD: u16 = 1;
    pub const I2C_RDWR: libc::c_ulong = 0x0707;
    pub const I2C_SLAVE_FORCE: libc::c_ulong = 0x0706;
    pub const I2C_SMBUS: libc::c_ulong = 0x0720;
    pub const I2C_SMBUS_READ: u8 = 1;
    pub const I2C_SMBUS_BYTE_DATA: u32 = 2;
    pub const GPIO_V2_GET_LINEINFO_WATCH_IOCTL: libc::c_ulong = iowr(0xB4, 0x06, size_of::<LineInfo>());
    pub const GPIO_V2_GET_LINE_IOCTL: libc::c_ulong = iowr(0xB4, 0x07, size_of::<LineRequest>());
    pub const GPIO_V2_LINE_GET_VALUES_IOCTL: libc::c_ulong = iowr(0xB4, 0x0E, size_of::<LineValues>());
    pub const GPIO_V2_LINE_SET_VALUES_IOCTL: libc::c_ulong = iowr(0xB4, 0x0F, size_of::<LineValues>());
    pub const HIDIOCGRAWINFO: libc::c_ulong = ior(b'H', 0x03, size_of::<HidrawDevinfo>());
    pub const GPIO_GET_CHIPINFO_IOCTL: libc::c_ulong = ior(0xB4, 0x01, size_of::<ChipInfo>());

    impl LineRequest {
        pub fn zeroed() -> Self {
            // SAFETY: all fields are integers or arrays of them; zero is valid.
            unsafe { std::mem::zeroed() }
        }
    }

    impl LineInfo {
        pub fn zeroed() -> Self {
            // SAFETY: as above.
            unsafe { std::mem::zeroed() }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Sizes from include/uapi/linux/gpio.h, i2c-dev.h, i2c.h and hidraw.h (x86_64), and
        /// ioctl numbers as the kernel headers expand them.
        #[test]
        fn layouts_match_the_kernel_uapi() {
            assert_eq!(size_of::<LineAttribute>(), 16);
            assert_eq!(size_of::<LineConfigAttribute>(), 24);
            assert_eq!(size_of::<LineConfig>(), 272);
            assert_eq!(size_of::<LineRequest>(), 592);
            assert_eq!(size_of::<LineValues>(), 16);
            assert_eq!(size_of::<LineInfo>(), 256);
            assert_eq!(size_of::<LineInfoChanged>(), 288);
            assert_eq!(size_of::<LineEvent>(), 48);
            assert_eq!(size_of::<I2cMsg>(), 16);
            assert_eq!(size_of::<I2cRdwrData>(), 16);
            assert_eq!(size_of::<HidrawDevinfo>(), 8);
            assert_eq!(size_of::<I2cSmbusData>(), 16);
            assert_eq!(GPIO_V2_GET_LINE_IOCTL, 0xc250_b407);
            assert_eq!(GPIO_V2_LINE_GET_VALUES_IOCTL, 0xc010_b40e);
            assert_eq!(GPIO_V2_GET_LINEINFO_WATCH_IOCTL, 0xc100_b406);
            assert_eq!(HIDIOCGRAWINFO, 0x8008_4803);
            assert_eq!(size_of::<ChipInfo>(), 68);
            assert_eq!(GPIO_GET_CHIPINFO_IOCTL, 0x8044_b401);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_bits_cover_a_full_64_line_request() {
        assert_eq!(line_bits(0..0), 0);
        assert_eq!(line_bits(0..3), 0b111);
        assert_eq!(line_bits(2..4), 0b1100);
        assert_eq!(line_bits(0..64), u64::MAX, "no shift overflow at 64 lines");
        assert_eq!(line_bits(63..70), 1 << 63, "indices past the bitmap are not lines");
    }

    #[test]
    fn debugfs_reads_give_length_or_the_kernels_errno() {
        let dir = std::env::temp_dir().join(format!("agent-debugfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let value = dir.join("value");
        std::fs::write(&value, "1\n").unwrap();
        assert_eq!(read_debugfs(value.to_str().unwrap()), 2);
        // nvmem-holder prints a failed nvmem_device_read as its negative errno.
        std::fs::write(&value, "-19\n").unwrap();
        assert_eq!(read_debugfs(value.to_str().unwrap()), -19);
        assert_eq!(read_debugfs(dir.join("absent").to_str().unwrap()), -i64::from(libc::ENOENT));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
