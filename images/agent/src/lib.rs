//! Wire protocol between the host (`harness::run::agent_link`) and the guest agent (`unplug-agent`).
//!
//! Transport: JSON lines over the virtio-serial port named [`PORT_NAME`]. Each line is one
//! JSON object. The host sends [`Request`]s; the guest sends [`GuestMessage`]s:
//!
//! ```text
//! host  → {"id":7,"op":"read","path":"/sys/bus/i2c/devices/0-0050/name","offset":0,"max_len":4096}
//! guest ← {"response":{"id":7,"ok":{"kind":"data","data":"24c02\n","eof":true}}}
//! guest ← {"response":{"id":8,"err":{"errno":19,"message":"read /sys/...: No such device"}}}
//! guest ← {"ready":{"protocol":1,"agent":"0.1.0","kernel_release":"6.12.117"}}
//! guest ← {"event":{"source":"agent","kind":"bad_request","data":{...}}}
//! ```
//!
//! Requests run concurrently in the guest, so responses come back in any order; `id` ties a
//! response to its request. `ready` is sent once at start (the host may connect later and
//! miss it, so hosts poll with `ping`, which answers the same [`Hello`]). `event` lines are not
//! tied to a request: the generic [`Event`] (source, kind, JSON data) lets later consumers
//! (GPIO, nvmem, i2c handles held open across an unplug) stream without a protocol change.
//!
//! Byte strings ([`Bytes`]: file contents, process output) must round-trip exactly, yet stay
//! readable in transcripts: valid UTF-8 is sent as a JSON string (JSON escapes keep it exact),
//! anything else (or text that is mostly control characters) as `{"hex":"..."}`. Hex rather than
//! base64: a reader of a transcript can see the bytes, and the data is small (sysfs attributes,
//! bounded command output). The `hex` crate encodes and decodes it.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of the virtio-serial port (`virtserialport,name=...`) the agent talks on.
pub const PORT_NAME: &str = "org.unplug.agent";

/// Bumped on incompatible changes; reported in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side accepts. [`Bytes`] take at most twice their size on the wire, so
/// the caps below keep every message well under it.
pub const MAX_LINE: usize = 16 << 20;

/// Default cap on each of stdout and stderr captured by `exec`.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;

/// Largest `max_output` the agent honours (larger requests are clamped).
pub const MAX_OUTPUT: u64 = 2 << 20;

/// Largest `read` the agent serves in one request (larger requests return less, not EOF).
pub const MAX_READ: u64 = 4 << 20;

/// A request from the host. `id` is echoed in the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    /// How long the guest may take (named apart from every [`Op`]'s fields, which share the
    /// object): past it the agent answers with an `ETIMEDOUT` error while
    /// the call, stuck in the kernel, keeps its thread (see [`Request::deadline`] when absent).
    /// The host sets it from its own deadline, scaled by its pace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_deadline_ms: Option<u64>,
    #[serde(flatten)]
    pub op: Op,
}

/// The guest deadline of a request the host waits `host_wait` for.
pub fn guest_deadline(host_wait: std::time::Duration) -> std::time::Duration {
    host_wait - (host_wait / 10).min(std::time::Duration::from_secs(2))
}

/// A request's deadline in the guest when it carries none: the host's reference deadline for
/// a request, on top of an exec's timeout or a release's wait.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;

impl Request {
    /// `op` with the guest deadline the host should give it when it waits `host_wait` for
    /// the answer: a tenth (at most 2 s) less, so the guest's timeout answer arrives before
    /// the host gives up and says which call was stuck.
    pub fn new(id: u64, op: Op, host_wait: std::time::Duration) -> Request {
        let deadline = u64::try_from(guest_deadline(host_wait).as_millis()).unwrap_or(u64::MAX);
        Request { id, request_deadline_ms: Some(deadline), op }
    }

    /// How long the guest may take before it answers with a timeout.
    pub fn deadline(&self) -> std::time::Duration {
        let ms = self.request_deadline_ms.unwrap_or_else(|| {
            let own = match &self.op {
                Op::Exec(exec) => exec.timeout_ms,
                Op::Release { wait_ms, .. } => *wait_ms,
                _ => 0,
            };
            own.saturating_add(DEFAULT_DEADLINE_MS)
        });
        std::time::Duration::from_millis(ms)
    }
}

/// What the host asks for. Paths of file operations must be absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Liveness and identity; answered with [`Reply::Hello`].
    Ping,
    /// Run a program; answered with [`Reply::Exec`].
    Exec(ExecRequest),
    /// `pread` up to `max_len` bytes at `offset`; answered with [`Reply::Data`].
    Read { path: String, offset: u64, max_len: u64 },
    /// Write `data` in one `write(2)` (sysfs and configfs stores expect a single write), at
    /// `offset` if given. With `create`, the file is created/truncated (tmpfs); without, it
    /// must exist (attributes). Answered with [`Reply::Written`].
    Write {
        path: String,
        data: Bytes,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "is_false")]
        create: bool,
    },
    /// `mkdir(2)` (configfs groups); answered with [`Reply::Done`].
    Mkdir {
        path: String,
        #[serde(default = "default_dir_mode")]
        mode: u32,
    },
    /// `rmdir(2)`; answered with [`Reply::Done`].
    Rmdir { path: String },
    /// `symlink(2)` creating `link` pointing at `target` (configfs links); [`Reply::Done`].
    Symlink { target: String, link: String },
    /// `unlink(2)` (removes configfs links); answered with [`Reply::Done`].
    Unlink { path: String },
    /// Open a handle and keep using it on a consumer thread until released or past its
    /// deadline; answered with [`Reply::Held`]. What it sees streams as [`Event`]s whose
    /// `source` is `holder-<handle>` and whose `data` is a [`ConsumerRecord`].
    Hold(HoldRequest),
    /// Stop a holder's loop and close its fd (after the unplug: a late close); answered with
    /// [`Reply::Done`] once the fd is closed, or an error naming a handle that is not held,
    /// or one saying the holder's call did not return within `wait_ms` (stuck in the
    /// kernel). The host sets `wait_ms` from its measured pace: a slow host's guest needs
    /// longer to print the reports a call trips.
    Release {
        handle: u64,
        #[serde(default = "default_release_wait_ms")]
        wait_ms: u64,
    },
    /// Sync, answer [`Reply::Done`], then `reboot(2)`.
    Reboot,
    /// Sync, answer [`Reply::Done`], then power off.
    Poweroff,
}

/// [`Op::Release`]'s wait when the host does not say (the reference machines' need).
pub const DEFAULT_RELEASE_WAIT_MS: u64 = 20_000;

fn default_release_wait_ms() -> u64 {
    DEFAULT_RELEASE_WAIT_MS
}

/// The [`ConsumerRecord::op`] a holder sends once its first use (a call, or a poll window)
/// returned: the host waits for it before anything may unplug the provider.
pub const HOLDER_READY: &str = "ready";

/// The [`ConsumerRecord::op`] a holder sends when its loop ended (deadline, error, release or
/// panic; the detail says which).
pub const HOLDER_STOPPED: &str = "stopped";

/// The [`ConsumerRecord::op`] of a holder's close of its handle (the late close after an
/// unplug), with the errno the close returned.
pub const HOLDER_CLOSED: &str = "closed";

/// The [`ConsumerRecord::detail`] of a record that only says how often the op's last outcome
/// repeated (its `repeats`): it stands for no call of its own.
pub const HOLDER_REPEATED: &str = "repeated";

/// A holder's call that took at least this long is sent as a record of its own even when its
/// outcome repeats the last one (its `latency_us` says how long): a call the kernel kept
/// waiting (a transfer the unplug left unanswered until its timeout) is news even if it then
/// "succeeded". Far above a normal call under TCG (milliseconds), below USB's 5 s
/// control-transfer timeout.
pub const SLOW_CALL: std::time::Duration = std::time::Duration::from_secs(1);

/// The start of a `stopped` record's [`ConsumerRecord::detail`] when the holder's loop
/// panicked (a bug in the agent, not the kernel's answer); the panic message follows.
pub const HOLDER_PANICKED: &str = "panic: ";

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_dir_mode() -> u32 {
    0o755
}

/// A program to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` without a `/` is looked up on `PATH` (the one in
    /// `env` if given; busybox applets live there).
    pub argv: Vec<String>,
    /// Variables added to (or overriding) the agent's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Bytes fed to stdin, which is then closed; without it stdin is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Bytes>,
    /// After this long the whole process group is killed with SIGKILL. The program counts as
    /// running until it has exited and its stdout/stderr are closed, so background children
    /// should redirect their output.
    pub timeout_ms: u64,
    /// Cap on each of stdout and stderr kept (at most [`MAX_OUTPUT`]); the rest is read and
    /// dropped.
    #[serde(default = "default_max_output")]
    pub max_output: u64,
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT
}

impl ExecRequest {
    /// `argv` with stdin from `/dev/null`, the agent's environment and directory, and the
    /// default output cap; set the public fields for more.
    pub fn new<S: AsRef<str>>(argv: &[S], timeout: std::time::Duration) -> Self {
        ExecRequest {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, if it exited.
    pub status: Option<i32>,
    /// Terminating signal, if it was killed (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// The deadline passed before the program exited and closed its output; the process
    /// group was killed.
    pub timed_out: bool,
    pub stdout: Bytes,
    pub stderr: Bytes,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdout_truncated: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// The agent's identity: sent as `ready` on start and as the answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The agent's crate version.
    pub agent: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
}

/// A line from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMessage {
    Ready(Hello),
    Response(Response),
    Event(Event),
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Reply),
    Err(ErrorReply),
}

/// A successful result; the variant matches the request's [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Hello(Hello),
    Exec(ExecResult),
    /// Bytes read; `eof` when fewer than `max_len` were available.
    Data {
        data: Bytes,
        eof: bool,
    },
    /// Bytes accepted by the write.
    Written {
        len: u64,
    },
    /// A holder started (its fd is open and its first request succeeded).
    Held {
        handle: u64,
    },
    Done,
}

/// The handle a holder keeps across an unplug: a user-space fd, or an in-kernel consumer the
/// agent drives through configfs and debugfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HoldKind {
    /// `/dev/gpiochipN`: a v2 line request (`lines` as inputs, `outputs` as outputs), then a
    /// get/set values loop on the line fd.
    GpioCdev,
    /// `/dev/gpiochipN`: a v2 edge-event request on `lines`, then poll + read events.
    GpioEvent,
    /// `/dev/gpiochipN` itself: line-info watches on `lines`, then poll + read changes.
    GpioChipWatch,
    /// `/sys/bus/nvmem/devices/<name>/nvmem`: pread (and pwrite back what was read).
    NvmemSysfs,
    /// `/dev/i2c-N`: a one-byte `I2C_RDWR` read from `addr`.
    I2cDev,
    /// `/dev/i2c-N`: an `I2C_SMBUS` byte-data read of register 0 at `addr` (for SMBus-only
    /// adapters such as i2c-stub, which answer `I2C_RDWR` with EOPNOTSUPP).
    I2cSmbus,
    /// `/dev/hidrawN`: `HIDIOCGRAWINFO`, then poll + read reports.
    Hidraw,
    /// In kernel: a gpio-virtuser device requesting `lines` of the chip `path` (its
    /// `/dev/gpiochipN`, or its label) as outputs, then reads and toggles of each line's
    /// debugfs `value` (`gpiod_get/set_value_cansleep` in the kernel).
    GpioVirtuser,
    /// As `gpio-virtuser`, but inputs with each line's IRQ requested through debugfs
    /// `interrupts`; reads only.
    GpioVirtuserIrq,
    /// In kernel: our `nvmem-holder` test module takes the nvmem device named `path` and
    /// keeps it; reads of its debugfs `read` are `nvmem_device_read` calls.
    NvmemKernel,
    /// As `nvmem-kernel`, in Rust: the resmgr series' `rust_nvmem_holder` sample (on
    /// `kernel::nvmem`), with the same debugfs interface. Resmgr kernel only.
    NvmemKernelRs,
    /// In kernel: a gpio-aggregator (`new_device`) takes `lines` of the chip `path`; the agent
    /// requests every line of the aggregated chip through its cdev and reads them, which the
    /// aggregator forwards to the descriptors it holds on the provider.
    GpioAggregator,
}

impl HoldKind {
    /// Every kind, for listings and errors.
    pub const ALL: [HoldKind; 12] = [
        HoldKind::GpioCdev,
        HoldKind::GpioEvent,
        HoldKind::GpioChipWatch,
        HoldKind::NvmemSysfs,
        HoldKind::I2cDev,
        HoldKind::I2cSmbus,
        HoldKind::Hidraw,
        HoldKind::GpioVirtuser,
        HoldKind::GpioVirtuserIrq,
        HoldKind::NvmemKernel,
        HoldKind::NvmemKernelRs,
        HoldKind::GpioAggregator,
    ];

    /// The kebab-case name used on the wire and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            HoldKind::GpioCdev => "gpio-cdev",
            HoldKind::GpioEvent => "gpio-event",
            HoldKind::GpioChipWatch => "gpio-chip-watch",
            HoldKind::NvmemSysfs => "nvmem-sysfs",
            HoldKind::I2cDev => "i2c-dev",
            HoldKind::I2cSmbus => "i2c-smbus",
            HoldKind::Hidraw => "hidraw",
            HoldKind::GpioVirtuser => "gpio-virtuser",
            HoldKind::GpioVirtuserIrq => "gpio-virtuser-irq",
            HoldKind::NvmemKernel => "nvmem-kernel",
            HoldKind::NvmemKernelRs => "nvmem-kernel-rs",
            HoldKind::GpioAggregator => "gpio-aggregator",
        }
    }

    /// Whether the consumer lives in the kernel (the agent only drives it).
    pub fn in_kernel(self) -> bool {
        matches!(
            self,
            HoldKind::GpioVirtuser
                | HoldKind::GpioVirtuserIrq
                | HoldKind::NvmemKernel
                | HoldKind::NvmemKernelRs
                | HoldKind::GpioAggregator
        )
    }
}

impl std::str::FromStr for HoldKind {
    type Err = String;
    fn from_str(s: &str) -> Result<HoldKind, String> {
        HoldKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = HoldKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown holder kind {s:?}; known kinds: {}", names.join(", "))
        })
    }
}

/// What to hold and how hard to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    pub kind: HoldKind,
    /// Absolute path of the device node or sysfs file; for `gpio-virtuser*` the chip label,
    /// for `nvmem-kernel` the nvmem device name.
    pub path: String,
    /// GPIO line offsets requested as inputs (edge sources for `gpio-event`, watched lines for
    /// `gpio-chip-watch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<u32>,
    /// GPIO line offsets requested as outputs (`gpio-cdev` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<u32>,
    /// I2C client address (`i2c-dev`, `i2c-smbus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<u16>,
    /// Pause between iterations (and poll timeout for the event kinds).
    pub interval_ms: u64,
    /// The loop stops this long after the start; the fd stays open until `release`.
    pub deadline_ms: u64,
    /// Keep iterating after an error that will not go away (ENODEV, POLLHUP, EOF) instead of
    /// stopping at the first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_going: bool,
}

/// One observation of a holder, sent when its state changes: the first success of an
/// operation, every change of outcome (with how often the previous one repeated), events read,
/// and the end of the loop. Kernel-returned values only; the agent judges nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    pub holder: u64,
    pub kind: HoldKind,
    /// This holder's records are numbered from 0 without gaps, so a receiver sees every one
    /// lost on the way (dropped by the agent's full queue, or by the host falling behind).
    #[serde(default)]
    pub seq: u64,
    /// The call or step: `open`, `GPIO_V2_LINE_GET_VALUES_IOCTL`, `poll`, `read`, `pread`,
    /// `I2C_RDWR`, `ready` ([`HOLDER_READY`]), `stopped`, `closed`, ...
    pub op: String,
    /// The call's return value when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<String>,
    /// `poll` revents, as the kernel returned them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revents: Option<i16>,
    pub latency_us: u64,
    /// `CLOCK_MONOTONIC` in the guest when the call returned.
    pub mono_ns: u64,
    /// How many times the previous outcome of this op repeated before this record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
    /// Kind-specific detail (values read, an event's fields, bytes read as hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What a successful data read returned (nvmem, SMBus), for the host to compare with the
    /// device model; absent in records of older agents and of calls that read no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ReadData>,
}

/// The bytes one read returned, as a holder records them: where in the device they start,
/// how many there were, their digest, and the bytes themselves when short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadData {
    /// Byte offset in the device the read started at.
    pub offset: u64,
    /// Bytes the read returned.
    pub len: u64,
    /// [`data_digest`] of those bytes.
    pub digest: String,
    /// The bytes as hex, when there are at most [`READ_DATA_INLINE`] of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

/// Reads up to this many bytes carry the bytes themselves, so the host can name the first
/// byte that differs; longer ones only their digest.
pub const READ_DATA_INLINE: usize = 64;

impl ReadData {
    pub fn new(offset: u64, bytes: &[u8]) -> ReadData {
        ReadData {
            offset,
            len: bytes.len() as u64,
            digest: data_digest(bytes),
            hex: (bytes.len() <= READ_DATA_INLINE).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }

    /// The bytes, if the record carries them (`None` also for hex that does not decode to
    /// `len` bytes: the record came from a broken or lying agent).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let hex = self.hex.as_deref()?;
        if hex.len() as u64 != self.len.checked_mul(2)? || !hex.is_ascii() {
            return None;
        }
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
    }
}

/// The digest both sides compute of a read's bytes: the first 16 hex digits of their SHA-256.
pub fn data_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `POLLIN` (the same on every Linux architecture).
pub const POLLIN: i16 = 0x1;

/// `POLLHUP|POLLERR`-style names of poll revents bits (Linux values).
pub fn poll_flags(revents: i16) -> String {
    const NAMES: [(i16, &str); 6] = [
        (POLLIN, "POLLIN"),
        (0x2, "POLLPRI"),
        (0x4, "POLLOUT"),
        (0x8, "POLLERR"),
        (0x10, "POLLHUP"),
        (0x20, "POLLNVAL"),
    ];
    let set: Vec<&str> = NAMES.iter().filter(|(bit, _)| revents & bit != 0).map(|(_, n)| *n).collect();
    if set.is_empty() {
        format!("{revents:#x}")
    } else {
        set.join("|")
    }
}

/// The symbolic name of the errnos a holder is likely to meet (`ENODEV`, ...).
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        9 => "EBADF",
        11 => "EAGAIN",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        19 => "ENODEV",
        22 => "EINVAL",
        25 => "ENOTTY",
        32 => "EPIPE",
        71 => "EPROTO",
        95 => "EOPNOTSUPP",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        121 => "EREMOTEIO",
        _ => return None,
    })
}

/// A failed request: the errno when a system call failed, and a message naming the call and
/// path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    pub message: String,
    /// The request's deadline passed with its call still in the kernel (errno `ETIMEDOUT`,
    /// which a call can also return itself).
    #[serde(default, skip_serializing_if = "is_false")]
    pub stuck: bool,
}

impl ErrorReply {
    /// Wraps an I/O error with context, keeping its errno.
    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        ErrorReply { errno: err.raw_os_error(), message: format!("{context}: {err}"), stuck: false }
    }

    /// An error with no errno (bad request, unsupported operation).
    pub fn msg(message: impl Into<String>) -> Self {
        ErrorReply { errno: None, message: message.into(), stuck: false }
    }

    /// An error with this errno and no call to name.
    pub fn errno(errno: i32, message: impl Into<String>) -> Self {
        ErrorReply { errno: Some(errno), message: message.into(), stuck: false }
    }

    /// The answer to a request whose deadline passed: see [`ErrorReply::stuck`].
    pub fn stuck(message: impl Into<String>) -> Self {
        ErrorReply { errno: Some(libc::ETIMEDOUT), message: message.into(), stuck: true }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => write!(f, "{} (errno {errno})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Something the guest reports on its own, not as an answer. `source` names the emitter
/// (`agent`, later a consumer handle id), `kind` what happened; `data` is kind-specific.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub source: String,
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A byte string that survives JSON exactly: a JSON string when it is valid UTF-8 (and not
/// mostly control characters), `{"hex":"..."}` otherwise.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(v: &str) -> Self {
        Bytes(v.as_bytes().to_vec())
    }
}

impl Bytes {
    /// Text unless JSON escaping would make it longer than hex (control characters cost six
    /// bytes each), so the wire size stays within twice the data and the caps below hold.
    fn as_text(&self) -> Option<&str> {
        let text = std::str::from_utf8(&self.0).ok()?;
        let escaped: usize = self
            .0
            .iter()
            .map(|&b| match b {
                b'\n' | b'\r' | b'\t' | b'"' | b'\\' => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum();
        (escaped <= 2 * self.0.len()).then_some(text)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_text() {
            Some(text) => s.serialize_str(text),
            None => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("hex", &hex::encode(&self.0))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or {\"hex\": \"...\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes(v.as_bytes().to_vec()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bytes, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "hex" || out.is_some() {
                        return Err(de::Error::custom(format!("unexpected key {key:?} in bytes")));
                    }
                    let hex: String = map.next_value()?;
                    out = Some(hex::decode(&hex).map_err(|e| de::Error::custom(format!("bytes: {e}")))?);
                }
                out.map(Bytes).ok_or_else(|| de::Error::missing_field("hex"))
            }
        }
        d.deserialize_any(BytesVisitor)
    }
}

/// Where the image lists busybox's applets, one name per line. The image links only the
/// applets called by path ([`BUSYBOX_LINKS`]); the agent runs any other one that `PATH` does
/// not have as `busybox NAME`.
pub const BUSYBOX_APPLETS: &str = "/etc/busybox-applets";

/// The busybox binary in the image.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applet links the image carries: the ones called by path, not looked up on `PATH`:
/// `/bin/sh` (the agent's `sh -c`, scripts' `#!/bin/sh`) and `/sbin/modprobe` (the kernel's
/// `modprobe_path`). A link per applet (268) was 7% of the kernel's instructions to `/init`
/// under TCG with KASAN, all of it unpacking the initramfs.
pub const BUSYBOX_LINKS: &[&str] = &["bin/sh", "sbin/modprobe"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        let line = serde_json::to_string(value).unwrap();
        assert!(!line.contains('\n'), "one message per line: {line}");
        let back: T = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, value, "{line}");
        line
    }

    fn req(op: Op) -> Request {
        Request { id: 42, request_deadline_ms: None, op }
    }

    #[test]
    fn hold_kind_names_are_the_wire_names() {
        for kind in HoldKind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.name()));
            assert_eq!(kind.name().parse::<HoldKind>(), Ok(kind));
        }
        let err = "gpio".parse::<HoldKind>().unwrap_err();
        assert!(err.contains("gpio-virtuser-irq") && err.contains("\"gpio\""), "{err}");
    }

    #[test]
    fn every_request_round_trips() {
        let ops = vec![
            Op::Ping,
            Op::Exec(ExecRequest {
                argv: vec!["uname".into(), "-r".into()],
                env: vec![("LANG".into(), "C".into())],
                cwd: Some("/tmp".into()),
                stdin: Some(Bytes(vec![0, 1, 0xff])),
                timeout_ms: 5000,
                max_output: 10,
            }),
            Op::Exec(ExecRequest {
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                stdin: None,
                timeout_ms: 1,
                max_output: DEFAULT_MAX_OUTPUT,
            }),
            Op::Read { path: "/sys/x".into(), offset: 3, max_len: 4096 },
            Op::Write { path: "/sys/x".into(), data: "1\n".into(), offset: None, create: false },
            Op::Write { path: "/tmp/x".into(), data: Bytes(vec![0x80]), offset: Some(9), create: true },
            Op::Mkdir { path: "/sys/kernel/config/x".into(), mode: 0o700 },
            Op::Rmdir { path: "/sys/kernel/config/x".into() },
            Op::Symlink { target: "/a".into(), link: "/b".into() },
            Op::Unlink { path: "/b".into() },
            Op::Reboot,
            Op::Poweroff,
        ];
        for op in ops {
            round_trip(&req(op));
        }
    }

    #[test]
    fn every_guest_message_round_trips() {
        let hello = Hello { protocol: PROTOCOL_VERSION, agent: "0.1.0".into(), kernel_release: "6.12.117".into() };
        let replies = vec![
            Reply::Hello(hello.clone()),
            Reply::Exec(ExecResult {
                status: Some(0),
                signal: None,
                timed_out: false,
                stdout: "6.12.117\n".into(),
                stderr: Bytes(vec![0xc3]),
                stdout_truncated: false,
                stderr_truncated: true,
                duration_ms: 12,
            }),
            Reply::Data { data: Bytes(vec![1, 2, 3]), eof: true },
            Reply::Written { len: 2 },
            Reply::Done,
        ];
        let mut messages: Vec<GuestMessage> =
            replies.into_iter().map(|r| GuestMessage::Response(Response { id: 1, outcome: Outcome::Ok(r) })).collect();
        messages.push(GuestMessage::Response(Response {
            id: u64::MAX,
            outcome: Outcome::Err(ErrorReply::errno(19, "no such device")),
        }));
        messages.push(GuestMessage::Response(Response {
            id: 3,
            outcome: Outcome::Err(ErrorReply::stuck("no answer within 28s")),
        }));
        messages.push(GuestMessage::Response(Response { id: 2, outcome: Outcome::Err(ErrorReply::msg("bad")) }));
        messages.push(GuestMessage::Ready(hello));
        messages.push(GuestMessage::Event(Event {
            source: "agent".into(),
            kind: "bad_request".into(),
            data: json!({"line": "x"}),
        }));
        for m in messages {
            round_trip(&m);
        }
    }

    #[test]
    fn hold_protocol_round_trips() {
        let hold = req(Op::Hold(HoldRequest {
            kind: HoldKind::GpioCdev,
            path: "/dev/gpiochip0".into(),
            lines: vec![0, 1],
            outputs: vec![2],
            addr: None,
            interval_ms: 10,
            deadline_ms: 5000,
            keep_going: true,
        }));
        let line = round_trip(&hold);
        assert!(line.contains(r#""op":"hold","kind":"gpio-cdev""#), "{line}");
        round_trip(&req(Op::Release { handle: 3, wait_ms: 60_000 }));
        let old: Request = serde_json::from_str(r#"{"id":1,"op":"release","handle":3}"#).unwrap();
        assert!(matches!(old.op, Op::Release { handle: 3, wait_ms: DEFAULT_RELEASE_WAIT_MS }), "{old:?}");
        round_trip(&Reply::Held { handle: 3 });
        let record = ConsumerRecord {
            holder: 3,
            kind: HoldKind::I2cDev,
            seq: 7,
            op: "I2C_RDWR".into(),
            ret: None,
            errno: Some(19),
            errno_name: errno_name(19).map(str::to_string),
            revents: Some(0x18),
            latency_us: 12,
            mono_ns: 1,
            repeats: 4,
            detail: None,
            data: None,
        };
        round_trip(&record);
        assert_eq!(record.errno_name.as_deref(), Some("ENODEV"));
        let read = ConsumerRecord { data: Some(ReadData::new(16, &[0x3c, 0x3b])), errno: None, ..record };
        let line = round_trip(&read);
        assert!(line.contains(r#""data":{"offset":16,"len":2,"digest":""#), "{line}");
        // A record of an agent from before `data` still reads.
        let old: ConsumerRecord = serde_json::from_str(
            r#"{"holder":1,"kind":"nvmem-sysfs","op":"pread","ret":16,"latency_us":3,"mono_ns":9}"#,
        )
        .unwrap();
        assert_eq!(old.data, None);
    }

    #[test]
    fn read_data_keeps_short_reads_and_rejects_bad_hex() {
        let d = ReadData::new(0, &[0x00, 0xff, 0x3c]);
        assert_eq!((d.len, d.hex.as_deref(), d.bytes()), (3, Some("00ff3c"), Some(vec![0x00, 0xff, 0x3c])));
        assert_eq!(d.digest, data_digest(&[0x00, 0xff, 0x3c]));
        assert_eq!(d.digest.len(), 16);
        let long = ReadData::new(0, &[7; READ_DATA_INLINE + 1]);
        assert_eq!((long.hex, long.len), (None, READ_DATA_INLINE as u64 + 1));
        for (hex, len) in [("00f", 2), ("zz", 1), ("00", 2), ("\u{e9}0", 1), ("00", u64::MAX)] {
            let bad = ReadData { hex: Some(hex.into()), len, ..d.clone() };
            assert_eq!(bad.bytes(), None, "{hex:?} as {len} bytes");
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let line = serde_json::to_string(&req(Op::Read { path: "/p".into(), offset: 0, max_len: 8 })).unwrap();
        assert_eq!(line, r#"{"id":42,"op":"read","path":"/p","offset":0,"max_len":8}"#);
        let line = serde_json::to_string(&Request::new(1, Op::Ping, std::time::Duration::from_secs(30))).unwrap();
        assert_eq!(line, r#"{"id":1,"request_deadline_ms":28000,"op":"ping"}"#);
        let resp = GuestMessage::Response(Response { id: 3, outcome: Outcome::Ok(Reply::Done) });
        assert_eq!(serde_json::to_string(&resp).unwrap(), r#"{"response":{"id":3,"ok":{"kind":"done"}}}"#);
        // Optional fields may be omitted by hand-written requests.
        let parsed: Request = serde_json::from_str(r#"{"id":1,"op":"exec","argv":["ls"],"timeout_ms":5}"#).unwrap();
        let Op::Exec(exec) = parsed.op else { panic!("not exec") };
        assert_eq!(exec.max_output, DEFAULT_MAX_OUTPUT);
    }

    #[test]
    fn deadlines_leave_the_host_time_to_hear_the_timeout() {
        use std::time::Duration;
        assert_eq!(Request::new(1, Op::Ping, Duration::from_secs(5)).deadline(), Duration::from_millis(4500));
        assert_eq!(Request::new(1, Op::Ping, Duration::from_secs(300)).deadline(), Duration::from_secs(298));
        let exec = Op::Exec(ExecRequest::new(&["true"], Duration::from_secs(60)));
        let default = Duration::from_millis(DEFAULT_DEADLINE_MS);
        assert_eq!(req(exec).deadline(), Duration::from_secs(60) + default, "an exec's own timeout comes first");
        assert_eq!(req(Op::Release { handle: 1, wait_ms: 20_000 }).deadline(), Duration::from_secs(20) + default);
        assert_eq!(req(Op::Ping).deadline(), default);
    }

    #[test]
    fn bytes_round_trip_exactly() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"hello\n".to_vec(),
            "\u{2028} \0 \"quoted\" \\ \t é".as_bytes().to_vec(),
            (0..=255).collect(),
            vec![0xff; 3],
        ];
        for bytes in cases {
            let line = round_trip(&Bytes(bytes.clone()));
            assert!(line.len() <= 2 * bytes.len() + 12, "{line}");
        }
        assert_eq!(serde_json::to_string(&Bytes(b"1\n".to_vec())).unwrap(), r#""1\n""#);
        assert_eq!(serde_json::to_string(&Bytes(vec![0xff])).unwrap(), r#"{"hex":"ff"}"#);
        // Valid UTF-8 that would escape to six bytes per byte goes as hex.
        assert_eq!(serde_json::to_string(&Bytes(vec![0; 4])).unwrap(), r#"{"hex":"00000000"}"#);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        for bad in
            [r#"{"hex":"abc"}"#, r#"{"hex":"zz"}"#, r#"{"b64":"00"}"#, r#"{}"#, "12", r#"{"hex":"00","hex":"00"}"#]
        {
            assert!(serde_json::from_str::<Bytes>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::from_str::<Bytes>(r#"{"hex":"00fF"}"#).unwrap(), Bytes(vec![0, 0xff]));
    }
}
