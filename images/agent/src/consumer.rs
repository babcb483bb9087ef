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
//! descriptors, and the agent uses them through a line request on the aggregated chip. Each
//! set-up step records its undo as it succeeds ([`Undo`]), so a set-up that fails half way,
//! a panic or a release all tear down exactly what exists, last first. Those interfaces are
//! found under a [`Root`], so tests can stand in for the kernel with a scratch directory.
//!
//! The ioctl structs are the kernel UAPI layouts (include/uapi/linux/gpio.h, i2c-dev.h,
//! hidraw.h), `repr(C)` with their sizes checked in the tests.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent::{errno_name, ConsumerRecord, ErrorReply, HoldKind, HoldRequest, ReadData, Reply};

/// Where a holder's records go (the port writer, wrapped as an `Event`).
pub type Sink = Arc<dyn Fn(ConsumerRecord) + Send + Sync>;

struct Held {
    stop: Arc<AtomicBool>,
    /// Tells the holder thread to close its fds (it waits for this after its loop ends).
    close: mpsc::Sender<()>,
    /// Signalled by the holder thread after it closed its fds, or with the panic that
    /// stopped the close.
    closed: mpsc::Receiver<Result<(), String>>,
}

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
static HOLDERS: Mutex<Option<HashMap<u64, Held>>> = Mutex::new(None);

/// Starts a holder; answers once its setup succeeded (or with the setup's error).
pub fn hold(req: HoldRequest, sink: Sink) -> Result<Reply, ErrorReply> {
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    let mut holder = Holder::open(&Root::system(), handle, &req, sink)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed) = mpsc::channel();
    let (close, close_rx) = mpsc::channel::<()>();
    let flag = stop.clone();
    thread::Builder::new()
        .name(format!("holder-{handle}"))
        .spawn(move || {
            // A panic is a bug in the agent, not something the kernel answered: it ends the
            // loop with a `stopped` record saying so (the host counts it as a failure, not a
            // clean run), and the handles are still held until the release closes them.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| holder.run(&req, &flag))) {
                let why = format!("{}{}", agent::HOLDER_PANICKED, crate::panic_message(&*panic));
                holder.report(agent::HOLDER_STOPPED, CallResult::Ok, None, 0, Some(why));
            }
            // The fds stay open past the loop until released: the close may come long after
            // the unplug (a late close), which is its own path through the kernel.
            let _ = close_rx.recv();
            let closed = std::panic::catch_unwind(AssertUnwindSafe(|| holder.close()));
            let _ = closed_tx.send(closed.map_err(|panic| crate::panic_message(&*panic)));
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
        Ok(Ok(())) => Ok(Reply::Done),
        Ok(Err(panic)) => Err(ErrorReply::msg(format!("holder {handle}: the agent panicked closing it: {panic}"))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ErrorReply::msg(format!(
            "holder {handle}: its thread ended without closing it (the agent panicked: see the kernel log)"
        ))),
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

/// One call's outcome as the state machine compares it: the op, and errno or revents; for a
/// data read, what it returned (so each distinct answer is reported, at its first occurrence).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallResult {
    Ok,
    /// A read that succeeded, by the digest of the bytes it returned.
    Read(u64),
    Errno(i32),
    Revents(i16),
}

/// One holder's handles. Field order is drop order, the reverse of set-up: the line request,
/// then the file it was made on, then the kernel consumer the file belongs to.
struct Holder {
    handle: u64,
    kind: HoldKind,
    sink: Sink,
    /// The line-request fd for the GPIO kinds that get one.
    line: Option<OwnedFd>,
    /// The device node or file opened by path (user-space kinds).
    file: Option<File>,
    /// The consumer in the kernel (in-kernel kinds).
    kernel: Option<KernelConsumer>,
    /// Tears down what set-up did in the kernel.
    undo: Undo,
    /// Per op: last outcome and how often it repeated since it was reported.
    last: HashMap<&'static str, (CallResult, u64)>,
    /// An error that will not go away was seen (loop stops unless keep_going).
    permanent: bool,
    /// Output value toggled by `gpio-cdev`.
    toggle: bool,
    /// The next record's [`ConsumerRecord::seq`].
    seq: u64,
}

impl Holder {
    /// Opens the handle and makes its setup request. On any error, what was already set up
    /// is undone (see [`Undo`]) before the error is returned.
    fn open(root: &Root, handle: u64, req: &HoldRequest, sink: Sink) -> Result<Holder, ErrorReply> {
        let mut undo = Undo::default();
        let (file, kernel) = if req.kind == HoldKind::GpioAggregator {
            let (consumer, chip) = KernelConsumer::aggregate(root, req, &mut undo)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&chip)
                .map_err(|e| ErrorReply::io(format!("open the aggregated chip {}", chip.display()), &e))?;
            (Some(file), Some(consumer))
        } else if req.kind.in_kernel() {
            (None, Some(KernelConsumer::set_up(root, handle, req, &mut undo)?))
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
            line: None,
            file,
            kernel,
            undo,
            last: HashMap::new(),
            permanent: false,
            toggle: false,
            seq: 0,
        };
        holder.setup(req).map_err(|e| ErrorReply::io(format!("{:?} setup on {}", req.kind, req.path), &e))?;
        holder.report("open", CallResult::Ok, Some(0), 0, None);
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
                self.report(agent::HOLDER_READY, CallResult::Ok, None, 0, None);
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
        self.report(agent::HOLDER_STOPPED, CallResult::Ok, None, 0, Some(why.to_string()));
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
                    sys(unsafe { libc::ioctl(line, uapi::GPIO_V2_LINE_GET_VALUES_IOCTL, &mut values) }.into())
                });
                if !req.outputs.is_empty() {
                    self.toggle = !self.toggle;
                    let out_mask = line_bits(req.lines.len()..req.lines.len() + req.outputs.len());
                    let mut set = uapi::LineValues { bits: if self.toggle { out_mask } else { 0 }, mask: out_mask };
                    self.call("GPIO_V2_LINE_SET_VALUES_IOCTL", || {
                        // SAFETY: as above.
                        sys(unsafe { libc::ioctl(line, uapi::GPIO_V2_LINE_SET_VALUES_IOCTL, &mut set) }.into())
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
                    sys(unsafe { libc::ioctl(fd, uapi::HIDIOCGRAWINFO, &mut info) }.into())
                });
                self.poll_then_read::<[u8; 64]>(fd, interval, |r| hex::encode(&r[..8]));
            }
            HoldKind::NvmemSysfs => {
                let mut buf = [0u8; 16];
                let mut got = 0;
                self.call_read("pread", 0, || {
                    // SAFETY: buf is valid for its length.
                    let n = sys(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } as i64)?;
                    got = usize::try_from(n).unwrap_or(0).min(buf.len());
                    Ok(buf[..got].to_vec())
                });
                if got > 0 {
                    self.call("pwrite", || {
                        // SAFETY: as above, the bytes just read written back in place.
                        sys(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), got, 0) } as i64)
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
                    sys(unsafe { libc::ioctl(fd, uapi::I2C_RDWR, &mut data) }.into())
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
                // Command 0 of an at24 is the byte at offset 0: the read has a known place.
                self.call_read("I2C_SMBUS", 0, || {
                    // SAFETY: data points at a buffer the size of union i2c_smbus_data.
                    sys(unsafe { libc::ioctl(fd, uapi::I2C_SMBUS, &mut data) }.into())?;
                    Ok(block[..1].to_vec())
                });
            }
            HoldKind::GpioVirtuser | HoldKind::GpioVirtuserIrq | HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => {
                if let Some(KernelConsumer::NvmemHolder { read }) = &self.kernel {
                    let read = read.clone();
                    self.call_read("nvmem_device_read", 0, || read_nvmem_holder(&read));
                }
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
                self.outcome("poll", CallResult::Errno(errno), None, latency, None, None);
            }
            return;
        }
        if rc == 0 {
            return;
        }
        let bad = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL);
        if pfd.revents & !libc::POLLIN != 0 {
            self.outcome("poll", CallResult::Revents(pfd.revents), Some(i64::from(rc)), latency, None, None);
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
            self.outcome("read", CallResult::Errno(errno), None, latency, None, None);
        } else if n == 0 {
            self.permanent = true;
            self.outcome("read", CallResult::Ok, Some(0), latency, Some("EOF".into()), None);
        } else {
            // SAFETY: T is plain old data (integers and arrays); zeroed then partly filled.
            let value = unsafe { buf.assume_init() };
            // Every event read is reported: they are the point of these holders and are rare.
            self.flush_op("read");
            self.report("read", CallResult::Ok, Some(n as i64), latency.as_micros() as u64, Some(describe(&value)));
        }
    }

    /// Runs `f` and records its outcome. `f` carries the errno in its error (see [`sys`]):
    /// reading `errno` here, after other calls, could see a later call's value.
    fn call(&mut self, op: &'static str, f: impl FnOnce() -> io::Result<i64>) {
        let t0 = Instant::now();
        let result = f();
        let latency = t0.elapsed();
        match result {
            Ok(ret) => self.outcome(op, CallResult::Ok, Some(ret), latency, None, None),
            Err(e) => self.failed(op, &e, latency),
        }
    }

    /// [`Holder::call`] for a read of data at `offset` in the device: `f` returns the bytes
    /// the kernel handed back, which go into the record ([`ReadData`]) whenever they differ
    /// from the op's last answer.
    fn call_read(&mut self, op: &'static str, offset: u64, f: impl FnOnce() -> io::Result<Vec<u8>>) {
        let t0 = Instant::now();
        let result = f();
        let latency = t0.elapsed();
        match result {
            Ok(bytes) => {
                let data = ReadData::new(offset, &bytes);
                // The digest is 16 hex digits: the comparison key is its value.
                let key = u64::from_str_radix(&data.digest, 16).unwrap_or(0);
                self.outcome(op, CallResult::Read(key), Some(bytes.len() as i64), latency, None, Some(data));
            }
            Err(e) => self.failed(op, &e, latency),
        }
    }

    /// Records a failed call; errors that will not go away end the loop.
    fn failed(&mut self, op: &'static str, e: &io::Error, latency: Duration) {
        let errno = e.raw_os_error().unwrap_or(0);
        if matches!(errno, libc::ENODEV | libc::EBADF | libc::ESHUTDOWN | libc::ENXIO) {
            self.permanent = true;
        }
        self.outcome(op, CallResult::Errno(errno), None, latency, None, None);
    }

    /// Reports `outcome` if it differs from the op's last one, or if the call was slow
    /// ([`agent::SLOW_CALL`]); otherwise counts a repeat.
    fn outcome(
        &mut self,
        op: &'static str,
        outcome: CallResult,
        ret: Option<i64>,
        latency: Duration,
        detail: Option<String>,
        data: Option<ReadData>,
    ) {
        let slow = latency >= agent::SLOW_CALL;
        match self.last.get_mut(op) {
            Some((last, repeats)) if *last == outcome && !slow => *repeats += 1,
            _ => {
                let repeats = self.last.insert(op, (outcome, 0)).map_or(0, |(_, r)| r);
                self.send(op, outcome, (ret, latency.as_micros() as u64), detail, repeats, data);
            }
        }
    }

    /// Reports how often the op's last outcome repeated since it was reported.
    fn flush_op(&mut self, op: &'static str) {
        if let Some((outcome, repeats)) = self.last.get_mut(op) {
            if *repeats > 0 {
                let (outcome, n) = (*outcome, std::mem::take(repeats));
                self.send(op, outcome, (None, 0), Some(agent::HOLDER_REPEATED.into()), n, None);
            }
        }
    }

    fn flush(&mut self) {
        let ops: Vec<&'static str> = self.last.keys().copied().collect();
        for op in ops {
            self.flush_op(op);
        }
    }

    fn report(&mut self, op: &str, outcome: CallResult, ret: Option<i64>, latency_us: u64, detail: Option<String>) {
        self.send(op, outcome, (ret, latency_us), detail, 0, None);
    }

    fn send(
        &mut self,
        op: &str,
        outcome: CallResult,
        (ret, latency_us): (Option<i64>, u64),
        detail: Option<String>,
        repeats: u64,
        data: Option<ReadData>,
    ) {
        let (errno, revents) = match outcome {
            CallResult::Ok | CallResult::Read(_) => (None, None),
            CallResult::Errno(e) => (Some(e), None),
            CallResult::Revents(r) => (None, Some(r)),
        };
        let seq = self.seq;
        self.seq += 1;
        (self.sink)(ConsumerRecord {
            holder: self.handle,
            kind: self.kind,
            seq,
            op: op.to_string(),
            ret,
            errno,
            errno_name: errno.and_then(errno_name).map(str::to_string),
            revents,
            latency_us,
            mono_ns: mono_ns(),
            repeats,
            detail,
            data,
        });
    }

    /// Closes the line fd and the file (a late close when the device is already gone), then
    /// tears down the kernel consumer.
    fn close(mut self) {
        let t0 = Instant::now();
        drop(self.line.take());
        drop(self.file.take());
        // What the teardown of an in-kernel consumer refused, if anything.
        let failed = self.undo.run();
        let detail = (!failed.is_empty()).then(|| failed.join("; "));
        self.report(agent::HOLDER_CLOSED, CallResult::Ok, Some(0), t0.elapsed().as_micros() as u64, detail);
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

/// Where the kernel interfaces the in-kernel kinds drive are mounted: `/` in the guest, a
/// scratch directory standing in for the kernel in tests.
#[derive(Clone)]
pub struct Root(PathBuf);

impl Root {
    pub fn system() -> Root {
        Root(PathBuf::from("/"))
    }

    /// `abs` (an absolute path as the guest knows it) under this root.
    fn path(&self, abs: &str) -> PathBuf {
        self.0.join(abs.trim_start_matches('/'))
    }
}

/// What a holder's set-up did in the kernel, undone in reverse order: by [`Undo::run`] on
/// release, which says what failed, or on drop when set-up stops half way (a later step
/// failed, the holder thread did not start, a panic), so no kernel consumer outlives its
/// holder.
#[derive(Default)]
struct Undo(Vec<(String, UndoStep)>);

type UndoStep = Box<dyn FnOnce() -> io::Result<()> + Send>;

impl Undo {
    /// Records how to undo a step that just succeeded.
    fn push(&mut self, what: impl Into<String>, undo: impl FnOnce() -> io::Result<()> + Send + 'static) {
        self.0.push((what.into(), Box::new(undo)));
    }

    /// Undoes every step, last first, each attempted even if an earlier one failed; returns
    /// what failed.
    fn run(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some((what, undo)) = self.0.pop() {
            if let Err(e) = undo() {
                failed.push(format!("{what}: {e}"));
            }
        }
        failed
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let failed = self.run();
        if !failed.is_empty() {
            crate::kmsg(&format!("undoing a holder's set-up failed: {}", failed.join("; ")));
        }
    }
}

/// An in-kernel consumer the agent set up and drives (its teardown is in the holder's
/// [`Undo`]).
enum KernelConsumer {
    GpioVirtuser(Virtuser),
    /// A holder of the nvmem-holder module or its Rust twin, owning one reference to an
    /// nvmem device: its debugfs `HOLDER/read`.
    NvmemHolder { read: PathBuf },
    /// A gpio-aggregator platform device (`gpio-aggregator.N`), used through the line
    /// request on its aggregated chip.
    Aggregator,
}

/// A live gpio-virtuser device with one entry per requested line.
struct Virtuser {
    /// Its debugfs dir.
    debugfs: PathBuf,
    entries: usize,
}

impl KernelConsumer {
    fn set_up(root: &Root, handle: u64, req: &HoldRequest, undo: &mut Undo) -> Result<KernelConsumer, ErrorReply> {
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
                Virtuser::build(root, handle, req, undo).map(KernelConsumer::GpioVirtuser)
            }
            HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => {
                let (module, dir) = if req.kind == HoldKind::NvmemKernel { NVMEM_HOLDER } else { NVMEM_HOLDER_RS };
                let dir = root.path(dir);
                if !dir.exists() {
                    let status = crate::programs::command("modprobe").arg(module).status();
                    if !status.as_ref().is_ok_and(|s| s.success()) {
                        return Err(ErrorReply::msg(format!(
                            "modprobe {module} failed ({status:?}): is the module in the image (nvmem-kernel-rs needs the resmgr kernel)?"
                        )));
                    }
                }
                if req.path.is_empty() || req.path.contains(char::is_whitespace) {
                    return Err(ErrorReply::msg(format!("{} needs an nvmem device name as path (got {:?})", req.kind.name(), req.path)));
                }
                let name = format!("holder-{handle}");
                std::fs::write(dir.join("get"), format!("{name} {}", req.path))
                    .map_err(|e| ErrorReply::io(format!("{module} get {name} {:?}", req.path), &e))?;
                let put = dir.join("put");
                undo.push(format!("{module} put {name}"), {
                    let name = name.clone();
                    move || std::fs::write(put, name)
                });
                Ok(KernelConsumer::NvmemHolder { read: dir.join(name).join("read") })
            }
            kind => Err(ErrorReply::msg(format!("{} is not an in-kernel holder kind", kind.name()))),
        }
    }

    /// Creates a gpio-aggregator of `req.lines` of chip `req.path`; returns it and the
    /// aggregated chip's `/dev` node.
    fn aggregate(root: &Root, req: &HoldRequest, undo: &mut Undo) -> Result<(KernelConsumer, PathBuf), ErrorReply> {
        if req.lines.is_empty() {
            return Err(ErrorReply::msg("gpio-aggregator needs at least one line"));
        }
        driver_present(root, AGGREGATOR_DRIVER, "gpio-aggregator", "CONFIG_GPIO_AGGREGATOR")?;
        let label = chip_key(&req.path)?;
        let offsets: Vec<String> = req.lines.iter().map(u32::to_string).collect();
        let devices = root.path(PLATFORM_DEVICES);
        let aggregators = || -> Vec<String> {
            std::fs::read_dir(&devices)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| n.starts_with("gpio-aggregator."))
                        .collect()
                })
                .unwrap_or_default()
        };
        let driver = root.path(AGGREGATOR_DRIVER);
        let before = aggregators();
        std::fs::write(driver.join("new_device"), format!("{label} {}", offsets.join(",")))
            .map_err(|e| ErrorReply::io(format!("gpio-aggregator new_device {label:?} {offsets:?}"), &e))?;
        // The kernel registers the device within the write and the aggregated chip once the
        // aggregator probed; both are looked for until the deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut device = None;
        loop {
            if device.is_none() {
                device = aggregators().into_iter().find(|n| !before.contains(n));
                if let Some(device) = &device {
                    let (delete, name) = (driver.join("delete_device"), device.clone());
                    undo.push(format!("delete_device {device}"), move || std::fs::write(delete, name));
                }
            }
            let chip = device.as_ref().and_then(|device| {
                std::fs::read_dir(devices.join(device)).ok().and_then(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok()).find(|n| n.starts_with("gpiochip"))
                })
            });
            if let Some(chip) = chip {
                return Ok((KernelConsumer::Aggregator, root.path("/dev").join(chip)));
            }
            if Instant::now() > deadline {
                return Err(ErrorReply::msg(match device {
                    None => "gpio-aggregator new_device made no new platform device".to_string(),
                    Some(device) => format!(
                        "{device} has no gpiochip after 5 s: the aggregator did not get lines {offsets:?} of {label:?}"
                    ),
                }));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The debugfs files one iteration reads, each named by the kernel call it makes.
    fn use_files(&self) -> Vec<(&'static str, PathBuf)> {
        match self {
            KernelConsumer::GpioVirtuser(v) => v.line_files("value").into_iter().map(|f| ("gpiod_get_value", f)).collect(),
            // Read for its data instead (`read_nvmem_holder`).
            KernelConsumer::NvmemHolder { .. } => Vec::new(),
            // Used through the line request on the aggregated chip instead.
            KernelConsumer::Aggregator => Vec::new(),
        }
    }
}

impl Virtuser {
    /// Creates the configfs groups, requests the lines (`live=1`) and, for
    /// `gpio-virtuser-irq`, their IRQs; the others become outputs, so each iteration can
    /// toggle them as well as read them. Each configfs step pushes its undo: `live=0`, then
    /// the groups, innermost first.
    fn build(root: &Root, handle: u64, req: &HoldRequest, undo: &mut Undo) -> Result<Virtuser, ErrorReply> {
        let step = |what: &str, r: io::Result<()>| r.map_err(|e| ErrorReply::io(what.to_string(), &e));
        driver_present(root, VIRTUSER_CONFIGFS, "gpio-virtuser", "CONFIG_GPIO_VIRTUSER, upstream since 6.11")?;
        let label = chip_key(&req.path)?;
        let mut mkdir = |what: &str, dir: PathBuf| {
            step(&format!("mkdir {what}"), std::fs::create_dir(&dir))?;
            undo.push(format!("rmdir {what}"), move || std::fs::remove_dir(dir));
            Ok::<(), ErrorReply>(())
        };
        let configfs = root.path(VIRTUSER_CONFIGFS).join(format!("holder-{handle}"));
        mkdir(&configfs.display().to_string(), configfs.clone())?;
        let connection = configfs.join(VIRTUSER_CON_ID);
        mkdir("gpio-virtuser connection", connection.clone())?;
        for (i, offset) in req.lines.iter().enumerate() {
            let entry = connection.join(i.to_string());
            mkdir(&format!("entry {i}"), entry.clone())?;
            step(&format!("{}/key", entry.display()), std::fs::write(entry.join("key"), &label))?;
            step(&format!("{}/offset", entry.display()), std::fs::write(entry.join("offset"), offset.to_string()))?;
        }
        let live = configfs.join("live");
        step("gpio-virtuser live=1 (requests the lines)", std::fs::write(&live, "1"))?;
        undo.push("live=0", move || std::fs::write(live, "0"));
        let dev = std::fs::read_to_string(configfs.join("dev_name"))
            .map_err(|e| ErrorReply::io("gpio-virtuser dev_name", &e))?;
        let virtuser = Virtuser { debugfs: root.path(VIRTUSER_DEBUGFS).join(dev.trim()), entries: req.lines.len() };
        let (attr, value, call) = if req.kind == HoldKind::GpioVirtuserIrq {
            ("interrupts", "1", "request_irq")
        } else {
            ("direction", "output-low", "gpiod_direction_output")
        };
        for path in virtuser.line_files(attr) {
            step(&format!("{call} through {}", path.display()), std::fs::write(&path, value))?;
        }
        Ok(virtuser)
    }

    /// The debugfs attribute `attr` of each line.
    fn line_files(&self, attr: &str) -> Vec<PathBuf> {
        (0..self.entries).map(|i| self.debugfs.join(format!("gpiod:{VIRTUSER_CON_ID}:{i}")).join(attr)).collect()
    }
}

/// ENODEV naming the driver when the kernel has no `dir` of it: a kernel built without it
/// (6.1 has no gpio-virtuser) would otherwise answer the first configfs or sysfs write with
/// a bare ENOENT on a path.
fn driver_present(root: &Root, dir: &str, driver: &str, option: &str) -> Result<(), ErrorReply> {
    if root.path(dir).is_dir() {
        return Ok(());
    }
    Err(ErrorReply::errno(libc::ENODEV, format!("this kernel has no {driver} driver: {dir} is missing ({option})")))
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

/// Writes a debugfs attribute: 0, or the write's error.
fn write_debugfs(path: &Path, data: &str) -> io::Result<i64> {
    std::fs::write(path, data).map(|()| 0)
}

/// Reads a debugfs attribute from a fresh open (gpio-virtuser's files refuse `pread`): its
/// length, or the error.
fn read_debugfs(path: &Path) -> io::Result<i64> {
    std::fs::read_to_string(path).map(|text| text.len() as i64)
}

/// Reads an nvmem holder's debugfs `read` from a fresh open: the bytes `nvmem_device_read`
/// returned (printed as hex by the module), or its error (printed as a negative errno). Text
/// that is neither is EBADMSG: the module and the agent disagree on the format.
fn read_nvmem_holder(path: &Path) -> io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)?;
    let text = text.trim();
    if let Some(errno) = text.strip_prefix('-') {
        let errno = errno.parse::<i32>().map_err(|_| io::Error::from_raw_os_error(libc::EBADMSG))?;
        return Err(io::Error::from_raw_os_error(errno));
    }
    if text.len() % 2 != 0 || !text.is_ascii() {
        return Err(io::Error::from_raw_os_error(libc::EBADMSG));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADMSG))
}

/// A raw system call's return value, with the errno read right after the call when it
/// failed (before anything else can change it).
fn sys(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    sys(rc.into()).map(drop)
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

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("agent-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A sink keeping every record.
    fn collecting() -> (Sink, Arc<Mutex<Vec<ConsumerRecord>>>) {
        let records: Arc<Mutex<Vec<ConsumerRecord>>> = Arc::default();
        let into = records.clone();
        (Arc::new(move |r| into.lock().unwrap().push(r)), records)
    }

    fn request(kind: HoldKind, path: &str, lines: Vec<u32>) -> HoldRequest {
        HoldRequest {
            kind,
            path: path.into(),
            lines,
            outputs: vec![],
            addr: None,
            interval_ms: 1,
            deadline_ms: 60_000,
            keep_going: false,
        }
    }

    #[test]
    fn nvmem_holder_reads_give_the_bytes_or_the_kernels_errno() {
        let dir = Scratch::new("debugfs");
        let read = dir.0.join("read");
        std::fs::write(&read, "3c3bff00\n").unwrap();
        assert_eq!(read_nvmem_holder(&read).unwrap(), [0x3c, 0x3b, 0xff, 0x00]);
        // nvmem-holder prints a failed nvmem_device_read as its negative errno.
        std::fs::write(&read, "-19\n").unwrap();
        assert_eq!(read_nvmem_holder(&read).unwrap_err().raw_os_error(), Some(libc::ENODEV));
        for garbage in ["3c3", "zz", "-x", "3c\u{e9}"] {
            std::fs::write(&read, garbage).unwrap();
            assert_eq!(read_nvmem_holder(&read).unwrap_err().raw_os_error(), Some(libc::EBADMSG), "{garbage:?}");
        }
        assert_eq!(read_nvmem_holder(&dir.0.join("absent")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        std::fs::write(&read, "1\n").unwrap();
        assert_eq!(read_debugfs(&read).unwrap(), 2);
    }

    /// An nvmem-kernel holder reading nvmem-holder's `read` file at `read`.
    fn nvmem_kernel_holder(sink: Sink, read: std::path::PathBuf) -> Holder {
        Holder {
            handle: 1,
            kind: HoldKind::NvmemKernel,
            sink,
            line: None,
            file: None,
            kernel: Some(KernelConsumer::NvmemHolder { read }),
            undo: Undo::default(),
            last: HashMap::new(),
            permanent: false,
            toggle: false,
            seq: 0,
        }
    }

    /// Each distinct answer of a data read is recorded with its bytes, at its first
    /// occurrence; repeats of the same answer are counted, not sent.
    #[test]
    fn a_read_that_returns_other_bytes_is_a_new_record_with_them() {
        let dir = Scratch::new("readdata");
        let read = dir.0.join("read");
        let (sink, records) = collecting();
        let mut holder = nvmem_kernel_holder(sink, read.clone());
        let req = request(HoldKind::NvmemKernel, "nvmem0", vec![]);
        for text in ["3c3b\n", "3c3b\n", "6b6b\n", "-19\n"] {
            std::fs::write(&read, text).unwrap();
            holder.iterate(&req, Duration::from_millis(1));
        }
        let records = records.lock().unwrap();
        let data: Vec<Option<(u64, Option<&str>, u64)>> =
            records.iter().map(|r| r.data.as_ref().map(|d| (d.len, d.hex.as_deref(), r.repeats))).collect();
        assert_eq!(data, [Some((2, Some("3c3b"), 0)), Some((2, Some("6b6b"), 1)), None], "{records:?}");
        assert_eq!(records[0].data.as_ref().unwrap().digest, agent::data_digest(&[0x3c, 0x3b]));
        assert_eq!(records[2].errno, Some(libc::ENODEV));
    }

    /// A call the kernel kept waiting is reported even when it then answered as the calls
    /// before it: the one that hid a 5 s USB timeout behind a "successful" GPIO write.
    #[test]
    fn a_slow_call_is_reported_even_when_its_outcome_repeats() {
        let (sink, records) = collecting();
        let mut holder = nvmem_kernel_holder(sink, PathBuf::from("/nonexistent"));
        let op = "GPIO_V2_LINE_SET_VALUES_IOCTL";
        let fast = Duration::from_millis(7);
        for latency in [fast, fast, fast, agent::SLOW_CALL + Duration::from_millis(4200), fast] {
            holder.outcome(op, CallResult::Ok, Some(0), latency, None, None);
        }
        holder.flush();
        let records = records.lock().unwrap();
        let seen: Vec<(Option<&str>, u64, u64)> =
            records.iter().map(|r| (r.detail.as_deref(), r.repeats, r.latency_us / 1000)).collect();
        // The first call, the slow one (after two unreported repeats), then one repeat flushed.
        assert_eq!(
            seen,
            [(None, 0, 7), (None, 2, 5200), (Some(agent::HOLDER_REPEATED), 1, 0)],
            "{records:?}"
        );
    }

    /// nvmem-holder's -EPERM is "-1", which a caller reading `errno` after the fact took for
    /// "look at errno" and recorded whatever an unrelated earlier call left there.
    #[test]
    fn a_kernel_errno_of_one_is_recorded_as_eperm() {
        let dir = Scratch::new("eperm");
        let read = dir.0.join("read");
        std::fs::write(&read, "-1\n").unwrap();
        let (sink, records) = collecting();
        let mut holder = nvmem_kernel_holder(sink, read);
        // Leaves ENOENT in errno.
        assert!(File::open(dir.0.join("absent")).is_err());
        holder.iterate(&request(HoldKind::NvmemKernel, "nvmem0", vec![]), Duration::from_millis(1));
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!((records[0].op.as_str(), records[0].errno), ("nvmem_device_read", Some(libc::EPERM)));
    }

    #[test]
    fn a_panicking_holder_says_so_and_still_closes() {
        let dir = Scratch::new("panic");
        let nvmem = dir.0.join("nvmem");
        std::fs::write(&nvmem, "0123456789abcdef").unwrap();
        let (keep, records) = collecting();
        // The panic comes from the sink, the one piece of a holder's loop a test can make fail.
        let sink: Sink = Arc::new(move |r: ConsumerRecord| {
            let ready = r.op == agent::HOLDER_READY;
            keep(r);
            assert!(!ready, "the sink fails");
        });
        let Reply::Held { handle } = hold(request(HoldKind::NvmemSysfs, nvmem.to_str().unwrap(), vec![]), sink).unwrap()
        else {
            panic!("not held")
        };
        let t0 = Instant::now();
        while !records.lock().unwrap().iter().any(|r| r.op == "stopped") && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        let released = release(handle, Duration::from_secs(10));
        let records = records.lock().unwrap();
        let ops: Vec<(&str, Option<&str>)> = records.iter().map(|r| (r.op.as_str(), r.detail.as_deref())).collect();
        assert_eq!(released, Ok(Reply::Done), "{ops:?}");
        let stopped = ops.iter().find(|(op, _)| *op == "stopped");
        assert_eq!(stopped, Some(&("stopped", Some("panic: the sink fails"))), "{ops:?}");
        assert_eq!(ops.last().map(|(op, _)| *op), Some("closed"), "{ops:?}");
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>(), "numbered without gaps");
    }

    /// A stand-in for the kernel's gpio-aggregator under a scratch root: `new_device` is a
    /// FIFO whose reader registers `gpio-aggregator.7` with a `gpiochip9`, whose `/dev` node is
    /// a plain file, so the line request on it fails (ENOTTY) after the aggregator exists.
    #[test]
    fn a_set_up_that_fails_late_deletes_its_aggregator() {
        let dir = Scratch::new("aggregator");
        let root = Root(dir.0.clone());
        let driver = root.path(AGGREGATOR_DRIVER);
        for d in [driver.clone(), root.path(PLATFORM_DEVICES), root.path("/dev")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let new_device = driver.join("new_device");
        let fifo = std::ffi::CString::new(new_device.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let kernel = {
            let root = root.clone();
            thread::spawn(move || {
                let asked = std::fs::read_to_string(new_device).unwrap();
                std::fs::create_dir_all(root.path(PLATFORM_DEVICES).join("gpio-aggregator.7/gpiochip9")).unwrap();
                std::fs::write(root.path("/dev/gpiochip9"), "").unwrap();
                asked
            })
        };
        let (sink, _) = collecting();
        let req = request(HoldKind::GpioAggregator, "gpio-sim.0-node0", vec![5, 6]);
        let err = Holder::open(&root, 1, &req, sink).err().expect("a line request on a plain file fails");
        assert_eq!(kernel.join().unwrap(), "gpio-sim.0-node0 5,6");
        assert_eq!(err.errno, Some(libc::ENOTTY), "{err}");
        let deleted = std::fs::read_to_string(driver.join("delete_device"));
        assert_eq!(deleted.ok().as_deref(), Some("gpio-aggregator.7"), "the aggregator outlived its holder");
    }

    /// A kernel without the driver (6.1 has no gpio-virtuser) gets ENODEV naming it, before
    /// any configfs write, and nothing to undo.
    #[test]
    fn a_kernel_without_the_driver_gets_enodev_naming_it() {
        let dir = Scratch::new("no-driver");
        let root = Root(dir.0.clone());
        for (kind, driver) in [(HoldKind::GpioVirtuser, "gpio-virtuser"), (HoldKind::GpioVirtuserIrq, "gpio-virtuser"), (HoldKind::GpioAggregator, "gpio-aggregator")] {
            let (sink, _) = collecting();
            let err = Holder::open(&root, 1, &request(kind, "gpio-sim.0-node0", vec![0]), sink).err().expect("no driver, no holder");
            assert_eq!(err.errno, Some(libc::ENODEV), "{err}");
            assert!(err.message.starts_with(&format!("this kernel has no {driver} driver: ")), "{err}");
        }
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0, "nothing written under the root");
    }

    #[test]
    fn undo_runs_last_first_on_run_and_on_drop() {
        let done: Arc<Mutex<Vec<u32>>> = Arc::default();
        let step = |n: u32, fails: bool| {
            let done = done.clone();
            move || {
                done.lock().unwrap().push(n);
                if fails {
                    Err(io::Error::from_raw_os_error(libc::EBUSY))
                } else {
                    Ok(())
                }
            }
        };
        let mut undo = Undo::default();
        undo.push("one", step(1, false));
        undo.push("two", step(2, true));
        undo.push("three", step(3, false));
        let failed = undo.run();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].starts_with("two: "), "{failed:?}");
        assert!(undo.run().is_empty(), "each step undone once");
        undo.push("four", step(4, false));
        undo.push("five", step(5, false));
        drop(undo);
        assert_eq!(*done.lock().unwrap(), [3, 2, 1, 5, 4]);
    }
}

