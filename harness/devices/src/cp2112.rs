//! A Silicon Labs CP2112 HID USB-to-SMBus bridge (10c4:ea90) as Linux's `hid-cp2112` drives it
//! (docs/protocols.md §2): USB and HID descriptors, feature reports on EP0 (version, SMBus config,
//! GPIO), and the I2C transfer state machine on the interrupt endpoints, in front of an
//! [`I2cBus`].
//!
//! [`Cp2112`] is a cloneable handle: one clone serves the guest (it implements
//! [`UsbDevice`]) while tests and scenario steps use another to set GPIO inputs, read outputs,
//! inject faults and read counters as the guest runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::i2c::{AttachError, I2cBus, I2cTarget};
use crate::usbredir::{DeviceInfo, Interface, InterruptEndpoint, LinkRequest, Setup, Speed, Stall, UsbDevice};

pub const VENDOR_ID: u16 = 0x10c4;
pub const PRODUCT_ID: u16 = 0xea90;

const INTERRUPT_IN: u8 = 0x81;
const INTERRUPT_OUT: u8 = 0x01;
const MAX_PACKET: u16 = 64;

/// bcdUSB 2.00 (2.01 would make the guest ask for a BOS descriptor), EP0 64 bytes, strings
/// 1/2/3, one configuration.
const DEVICE_DESCRIPTOR: [u8; 18] =
    [0x12, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x40, 0xc4, 0x10, 0x90, 0xea, 0x00, 0x00, 0x01, 0x02, 0x03, 0x01];

/// One HID interface (subclass 0: a boot subclass would make usbhid skip GET_REPORT) with an
/// interrupt IN and the mandatory interrupt OUT endpoint (every SMBus transfer is an output
/// report; usbhid has no fallback without it).
const CONFIG_DESCRIPTOR: [u8; 41] = [
    0x09, 0x02, 0x29, 0x00, 0x01, 0x01, 0x00, 0x80, 0x32, // configuration 1, 100 mA
    0x09, 0x04, 0x00, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, // interface 0, HID
    0x09, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, 0xa7, 0x00, // HID 1.11, report descriptor 167 bytes
    0x07, 0x05, 0x81, 0x03, 0x40, 0x00, 0x01, // EP1 IN, interrupt, 64 bytes, 1 ms
    0x07, 0x05, 0x01, 0x03, 0x40, 0x00, 0x01, // EP1 OUT
];

/// The HID descriptor inside the configuration (GET_DESCRIPTOR 0x21 on the interface).
const HID_DESCRIPTOR_RANGE: std::ops::Range<usize> = 18..27;

/// Vendor page 0xff00 declaring every report id the driver uses with AN495's sizes: the HID
/// core drops input reports whose id is not declared, and the largest input report is exactly
/// 64 bytes with its id, so usbhid's IN URB matches the endpoint size.
const REPORT_DESCRIPTOR: [u8; 167] = [
    0x06, 0x00, 0xff, 0x09, 0x01, 0xa1, 0x01, 0x15, 0x00, 0x26, 0xff, 0x00, 0x75, 0x08, 0x85, 0x01, //
    0x95, 0x01, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x02, 0x95, 0x04, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x03, //
    0x95, 0x01, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x04, 0x95, 0x02, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x05, //
    0x95, 0x02, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x06, 0x95, 0x0d, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x20, //
    0x95, 0x01, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x21, 0x95, 0x09, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x22, //
    0x95, 0x3f, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x23, 0x95, 0x3f, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x24, //
    0x95, 0x3f, 0x09, 0x01, 0xb1, 0x02, 0x85, 0x10, 0x95, 0x03, 0x09, 0x01, 0x91, 0x02, 0x85, 0x11, //
    0x95, 0x14, 0x09, 0x01, 0x91, 0x02, 0x85, 0x12, 0x95, 0x02, 0x09, 0x01, 0x91, 0x02, 0x85, 0x14, //
    0x95, 0x3f, 0x09, 0x01, 0x91, 0x02, 0x85, 0x15, 0x95, 0x01, 0x09, 0x01, 0x91, 0x02, 0x85, 0x17, //
    0x95, 0x01, 0x09, 0x01, 0x91, 0x02, 0x85, 0x13, 0x95, 0x3f, 0x09, 0x01, 0x81, 0x02, 0x85, 0x16, //
    0x95, 0x06, 0x09, 0x01, 0x81, 0x02, 0xc0,
];

const MANUFACTURER: &str = "Silicon Laboratories";
const PRODUCT: &str = "CP2112 HID USB-to-SMBus Bridge";
const SERIAL: &str = "0000000001";
const LANGID_EN_US: u16 = 0x0409;

/// Report ids (AN495).
mod report {
    pub const RESET: u8 = 0x01;
    pub const GPIO_CONFIG: u8 = 0x02;
    pub const GPIO_GET: u8 = 0x03;
    pub const GPIO_SET: u8 = 0x04;
    pub const VERSION: u8 = 0x05;
    pub const SMBUS_CONFIG: u8 = 0x06;
    pub const READ_REQUEST: u8 = 0x10;
    pub const WRITE_READ_REQUEST: u8 = 0x11;
    pub const READ_FORCE_SEND: u8 = 0x12;
    pub const READ_RESPONSE: u8 = 0x13;
    pub const WRITE: u8 = 0x14;
    pub const STATUS_REQUEST: u8 = 0x15;
    pub const STATUS_RESPONSE: u8 = 0x16;
    pub const CANCEL: u8 = 0x17;
    pub const LOCK_BYTE: u8 = 0x20;
    pub const USB_CONFIG: u8 = 0x21;
    pub const MANUFACTURER: u8 = 0x22;
    pub const PRODUCT: u8 = 0x23;
    pub const SERIAL: u8 = 0x24;
}

/// Part number and version: version 2 and later do write-read with a repeated start, which
/// the driver needs for at24's two-message reads.
const VERSION_REPORT: [u8; 3] = [report::VERSION, 0x0c, 0x02];

/// Power-on SMBus configuration: 100 kHz, our address 0x02, no auto-send, no timeouts.
const SMBUS_CONFIG_DEFAULT: [u8; 14] = [report::SMBUS_CONFIG, 0x00, 0x01, 0x86, 0xa0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];

/// Largest data payload of a read response or write request.
const MAX_CHUNK: usize = 61;
const MAX_READ: usize = 512;
const MAX_TARGET: usize = 16;
const INPUT_REPORT_LEN: usize = 64;

/// Transfer status (status0 of report 0x16).
mod xfer_status {
    pub const IDLE: u8 = 0;
    pub const BUSY: u8 = 1;
    pub const COMPLETE: u8 = 2;
    pub const ERROR: u8 = 3;
    /// status1 of a completed transfer.
    pub const SUCCEEDED: u8 = 5;
    /// status1 when the address was not acknowledged (Linux: -ETIMEDOUT).
    pub const ADDRESS_NAK: u8 = 0;
}

/// Faults the next transfers and requests suffer. Set between scenario steps with
/// [`Cp2112::set_faults`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hold every reply back this long (widens race windows in the guest).
    pub reply_delay: Duration,
    /// STALL every control request on EP0.
    pub stall_ep0: bool,
    /// Fail every transfer with this status1 (0/1 → -ETIMEDOUT, others → -EIO in Linux).
    pub transfer_error: Option<u8>,
    /// Every address NAKs, as if the bus were empty.
    pub nak: bool,
    /// Report BUSY this many times before each transfer's final status (10 or more makes the
    /// driver cancel and time out).
    pub busy_before_complete: u32,
    /// Drop the link when transfer number N (counted from 1 over the device's life, see
    /// [`Counters::transfers`]) starts.
    pub unplug_at_transfer: Option<(u64, LinkRequest)>,
    /// XOR every byte a read returns with this mask (0: none): a lying device, whose reads
    /// succeed with bytes its targets never held (what the host's data check must catch).
    pub corrupt_reads: u8,
}

/// What the guest did, for tests and observers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// I2C transfers started (read, write or write-read requests).
    pub transfers: u64,
    /// Transfers that ended in an address NAK.
    pub naks: u64,
    /// Output or feature reports with a bad id or length (ignored or stalled).
    pub malformed_reports: u64,
    /// Bus resets from the host controller.
    pub resets: u64,
}

/// The GPIO block: 8 pins, bit n = GPIO n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpio {
    /// 1 = output.
    pub direction: u8,
    /// 1 = push-pull, 0 = open drain.
    pub push_pull: u8,
    /// The output latch.
    pub latch: u8,
    /// The level the outside world drives (or pulls up to) on each pin.
    pub external: u8,
}

impl Gpio {
    /// The level on each pin: a push-pull output drives its latch; an open-drain output pulls
    /// low or lets the external level through; an input reads the external level.
    pub fn levels(&self) -> u8 {
        let driven = self.direction & self.push_pull;
        let open_drain = self.direction & !self.push_pull;
        (driven & self.latch) | (open_drain & self.latch & self.external) | (!self.direction & self.external)
    }
}

impl Default for Gpio {
    /// Power-on: all inputs, open drain, latch high, pins pulled up.
    fn default() -> Gpio {
        Gpio { direction: 0, push_pull: 0, latch: 0xff, external: 0xff }
    }
}

enum TransferResult {
    /// Read data (empty for writes) and how much of it the guest has fetched.
    Complete {
        data: Vec<u8>,
        fetched: usize,
    },
    Error {
        status1: u8,
    },
}

struct Transfer {
    busy_left: u32,
    outcome: TransferResult,
}

struct Model {
    bus: I2cBus,
    gpio: Gpio,
    /// Special-function and clock-divider bytes of the GPIO config report, kept as written.
    gpio_special: [u8; 2],
    smbus_config: [u8; 14],
    transfer: Option<Transfer>,
    input: VecDeque<Vec<u8>>,
    faults: Faults,
    counters: Counters,
    link_request: Option<LinkRequest>,
}

/// A CP2112 and its I2C bus. Clones share the device.
#[derive(Clone)]
pub struct Cp2112 {
    model: Arc<Mutex<Model>>,
}

impl Default for Cp2112 {
    fn default() -> Cp2112 {
        Cp2112::new()
    }
}

impl Cp2112 {
    /// A powered-on bridge with an empty bus.
    pub fn new() -> Cp2112 {
        let model = Model {
            bus: I2cBus::new(),
            gpio: Gpio::default(),
            gpio_special: [0, 0],
            smbus_config: SMBUS_CONFIG_DEFAULT,
            transfer: None,
            input: VecDeque::new(),
            faults: Faults::default(),
            counters: Counters::default(),
            link_request: None,
        };
        Cp2112 { model: Arc::new(Mutex::new(model)) }
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        // A panicking test thread must not take the device down with it.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn attach(&self, address: u8, target: Box<dyn I2cTarget>) -> Result<(), AttachError> {
        self.lock().bus.attach(address, target)
    }

    pub fn detach(&self, address: u8) -> Option<Box<dyn I2cTarget>> {
        self.lock().bus.detach(address)
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    pub fn gpio(&self) -> Gpio {
        self.lock().gpio
    }

    /// Drives pin `pin` (0..8) from outside; the guest sees the change on its next GPIO poll.
    pub fn set_external(&self, pin: u8, high: bool) {
        let bit = 1u8.checked_shl(u32::from(pin)).unwrap_or(0);
        let mut m = self.lock();
        m.gpio.external = if high { m.gpio.external | bit } else { m.gpio.external & !bit };
    }
}

impl UsbDevice for Cp2112 {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            speed: Speed::Full,
            class: 0,
            subclass: 0,
            protocol: 0,
            vendor_id: VENDOR_ID,
            product_id: PRODUCT_ID,
            device_version_bcd: 0x0000,
            ep0_max_packet_size: MAX_PACKET,
            interfaces: vec![Interface { number: 0, class: 0x03, subclass: 0, protocol: 0 }],
            endpoints: [INTERRUPT_IN, INTERRUPT_OUT]
                .map(|address| InterruptEndpoint { address, interface: 0, interval: 1, max_packet_size: MAX_PACKET })
                .to_vec(),
        }
    }

    fn control(&mut self, setup: &Setup, data: &[u8]) -> Result<Vec<u8>, Stall> {
        self.lock().control(setup, data)
    }

    fn interrupt_out(&mut self, endpoint: u8, data: &[u8]) {
        if endpoint == INTERRUPT_OUT {
            self.lock().output_report(data);
        }
    }

    fn poll_in(&mut self) -> Option<(u8, Vec<u8>)> {
        self.lock().input.pop_front().map(|r| (INTERRUPT_IN, r))
    }

    fn reset(&mut self) {
        let mut m = self.lock();
        m.counters.resets += 1;
        m.transfer = None;
        m.input.clear();
    }

    fn link_request(&mut self) -> Option<LinkRequest> {
        self.lock().link_request.take()
    }

    fn reply_delay(&self) -> Duration {
        self.lock().faults.reply_delay
    }
}

/// bmRequestType/bRequest pairs (USB 2.0 §9.4, HID 1.11 §7.2).
mod request {
    pub const GET_STATUS: u8 = 0x00;
    pub const CLEAR_FEATURE: u8 = 0x01;
    pub const SET_FEATURE: u8 = 0x03;
    pub const GET_DESCRIPTOR: u8 = 0x06;
    pub const HID_GET_REPORT: u8 = 0x01;
    pub const HID_GET_IDLE: u8 = 0x02;
    pub const HID_SET_REPORT: u8 = 0x09;
    pub const HID_SET_IDLE: u8 = 0x0a;
}

const REPORT_TYPE_OUTPUT: u8 = 2;
const REPORT_TYPE_FEATURE: u8 = 3;

impl Model {
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Result<Vec<u8>, Stall> {
        if self.faults.stall_ep0 {
            return Err(Stall);
        }
        let [kind, index] = setup.value.to_be_bytes();
        match (setup.request_type, setup.request) {
            (0x80, request::GET_DESCRIPTOR) => standard_descriptor(kind, index, setup.index),
            (0x81, request::GET_DESCRIPTOR) => match kind {
                0x21 => Ok(CONFIG_DESCRIPTOR.get(HID_DESCRIPTOR_RANGE).ok_or(Stall)?.to_vec()),
                0x22 => Ok(REPORT_DESCRIPTOR.to_vec()),
                _ => Err(Stall),
            },
            (0x80..=0x82, request::GET_STATUS) => Ok(vec![0, 0]),
            (0x00..=0x02, request::CLEAR_FEATURE | request::SET_FEATURE) => Ok(Vec::new()),
            (0x21, request::HID_SET_IDLE) => Ok(Vec::new()),
            (0xa1, request::HID_GET_IDLE) => Ok(vec![0]),
            (0xa1, request::HID_GET_REPORT) if kind == REPORT_TYPE_FEATURE => self.get_feature(index),
            (0x21, request::HID_SET_REPORT) if kind == REPORT_TYPE_FEATURE => self.set_feature(data),
            (0x21, request::HID_SET_REPORT) if kind == REPORT_TYPE_OUTPUT => {
                self.output_report(data);
                Ok(Vec::new())
            }
            _ => Err(Stall),
        }
    }

    fn get_feature(&mut self, id: u8) -> Result<Vec<u8>, Stall> {
        let g = self.gpio;
        Ok(match id {
            report::GPIO_CONFIG => {
                let [special, clock_div] = self.gpio_special;
                vec![id, g.direction, g.push_pull, special, clock_div]
            }
            report::GPIO_GET => vec![id, g.levels()],
            report::VERSION => VERSION_REPORT.to_vec(),
            report::SMBUS_CONFIG => self.smbus_config.to_vec(),
            // All fields locked: the driver makes its sysfs attributes read-only.
            report::LOCK_BYTE => vec![id, 0x00],
            report::USB_CONFIG => {
                let [v0, v1] = VENDOR_ID.to_le_bytes();
                let [p0, p1] = PRODUCT_ID.to_le_bytes();
                vec![id, v0, v1, p0, p1, 0x32, 0x00, 0x01, 0x00, 0x00]
            }
            report::MANUFACTURER => string_report(id, MANUFACTURER),
            report::PRODUCT => string_report(id, PRODUCT),
            report::SERIAL => string_report(id, SERIAL),
            _ => {
                self.counters.malformed_reports += 1;
                return Err(Stall);
            }
        })
    }

    fn set_feature(&mut self, data: &[u8]) -> Result<Vec<u8>, Stall> {
        match data {
            [report::RESET, ..] => self.transfer = None,
            [report::GPIO_CONFIG, direction, push_pull, special, clock_div, ..] => {
                self.gpio.direction = *direction;
                self.gpio.push_pull = *push_pull;
                self.gpio_special = [*special, *clock_div];
            }
            [report::GPIO_SET, value, mask, ..] => self.gpio.latch = (self.gpio.latch & !mask) | (value & mask),
            [report::SMBUS_CONFIG, ..] => {
                self.smbus_config =
                    data.get(..SMBUS_CONFIG_DEFAULT.len()).ok_or(Stall)?.try_into().map_err(|_| Stall)?;
            }
            // Everything else is one-time programmable and locked, or unknown, or too short.
            _ => {
                self.counters.malformed_reports += 1;
                return Err(Stall);
            }
        }
        Ok(Vec::new())
    }

    /// An output report from the interrupt OUT endpoint (or SET_REPORT output).
    fn output_report(&mut self, data: &[u8]) {
        match data {
            [report::READ_REQUEST, address, hi, lo, ..] => {
                if let Some(len) = read_length(*hi, *lo) {
                    self.start(Request::Read { address: address >> 1, len });
                    return;
                }
            }
            [report::WRITE_READ_REQUEST, address, hi, lo, target_len, rest @ ..] => {
                let target = rest.get(..usize::from(*target_len)).filter(|t| (1..=MAX_TARGET).contains(&t.len()));
                if let (Some(len), Some(target)) = (read_length(*hi, *lo), target) {
                    self.start(Request::WriteRead { address: address >> 1, target: target.to_vec(), len });
                    return;
                }
            }
            [report::WRITE, address, len, rest @ ..] => {
                let payload = rest.get(..usize::from(*len)).filter(|p| (1..=MAX_CHUNK).contains(&p.len()));
                if let Some(payload) = payload {
                    self.start(Request::Write { address: address >> 1, data: payload.to_vec() });
                    return;
                }
            }
            [report::STATUS_REQUEST, ..] => return self.status_response(),
            [report::READ_FORCE_SEND, hi, lo, ..] => {
                return self.read_response(usize::from(u16::from_be_bytes([*hi, *lo])))
            }
            [report::CANCEL, ..] => {
                self.transfer = None;
                return;
            }
            _ => {}
        }
        tracing::warn!(report = ?data.get(..data.len().min(8)), "malformed CP2112 output report ignored");
        self.counters.malformed_reports += 1;
    }

    fn start(&mut self, request: Request) {
        self.counters.transfers += 1;
        if let Some((n, how)) = self.faults.unplug_at_transfer {
            if n == self.counters.transfers {
                self.link_request = Some(how);
            }
        }
        let outcome = if let Some(status1) = self.faults.transfer_error {
            TransferResult::Error { status1 }
        } else {
            let result = if self.faults.nak {
                Err(crate::i2c::Nak)
            } else {
                let mask = self.faults.corrupt_reads;
                let garble = |data: Vec<u8>| data.into_iter().map(|b| b ^ mask).collect::<Vec<u8>>();
                match request {
                    Request::Read { address, len } => self.bus.read(address, len).map(garble),
                    Request::Write { address, data } => self.bus.write(address, &data).map(|()| Vec::new()),
                    Request::WriteRead { address, target, len } => self.bus.write_read(address, &target, len).map(garble),
                }
            };
            match result {
                Ok(data) => TransferResult::Complete { data, fetched: 0 },
                Err(crate::i2c::Nak) => {
                    self.counters.naks += 1;
                    TransferResult::Error { status1: xfer_status::ADDRESS_NAK }
                }
            }
        };
        self.transfer = Some(Transfer { busy_left: self.faults.busy_before_complete, outcome });
    }

    fn status_response(&mut self) {
        let (status0, status1, bytes) = match &mut self.transfer {
            None => (xfer_status::IDLE, 0, 0u16),
            Some(t) if t.busy_left > 0 => {
                t.busy_left -= 1;
                (xfer_status::BUSY, 0, 0)
            }
            Some(Transfer { outcome: TransferResult::Complete { data, .. }, .. }) => {
                // At most MAX_READ bytes, so it fits.
                (xfer_status::COMPLETE, xfer_status::SUCCEEDED, u16::try_from(data.len()).unwrap_or(u16::MAX))
            }
            Some(Transfer { outcome: TransferResult::Error { status1 }, .. }) => (xfer_status::ERROR, *status1, 0),
        };
        let [b0, b1] = bytes.to_be_bytes();
        // status2 (retries) is always 0: the emulated bus never retries.
        self.input.push_back(vec![report::STATUS_RESPONSE, status0, status1, 0, 0, b0, b1]);
    }

    /// One read response of up to 61 bytes; the driver asks again until it has everything.
    fn read_response(&mut self, wanted: usize) {
        let mut out = vec![report::READ_RESPONSE, xfer_status::IDLE, 0];
        if let Some(Transfer { busy_left: 0, outcome: TransferResult::Complete { data, fetched } }) = &mut self.transfer {
            let chunk = data.get(*fetched..).unwrap_or_default();
            let chunk = chunk.get(..wanted.min(MAX_CHUNK).min(chunk.len())).unwrap_or_default();
            *fetched += chunk.len();
            out[1] = xfer_status::COMPLETE;
            out[2] = u8::try_from(chunk.len()).unwrap_or(0);
            out.extend_from_slice(chunk);
        }
        out.resize(INPUT_REPORT_LEN, 0);
        self.input.push_back(out);
    }
}

enum Request {
    Read { address: u8, len: usize },
    Write { address: u8, data: Vec<u8> },
    WriteRead { address: u8, target: Vec<u8>, len: usize },
}

fn read_length(hi: u8, lo: u8) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([hi, lo]))).filter(|n| (1..=MAX_READ).contains(n))
}

fn standard_descriptor(kind: u8, index: u8, langid: u16) -> Result<Vec<u8>, Stall> {
    match (kind, index) {
        (0x01, 0) => Ok(DEVICE_DESCRIPTOR.to_vec()),
        (0x02, 0) => Ok(CONFIG_DESCRIPTOR.to_vec()),
        (0x03, 0) => Ok([4, 0x03].into_iter().chain(LANGID_EN_US.to_le_bytes()).collect()),
        (0x03, 1..=3) if langid == LANGID_EN_US || langid == 0 => {
            let text = [MANUFACTURER, PRODUCT, SERIAL].get(usize::from(index) - 1).ok_or(Stall)?;
            Ok(usb_string(text))
        }
        // Not high-speed capable: no device qualifier; bcdUSB 2.00: no BOS.
        _ => Err(Stall),
    }
}

/// A string descriptor: bLength, 0x03, UTF-16LE.
fn usb_string(text: &str) -> Vec<u8> {
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut out = vec![u8::try_from(2 + units.len()).unwrap_or(u8::MAX), 0x03];
    out.extend_from_slice(&units);
    out
}

/// A string feature report (0x22..0x24): id, then the string descriptor, padded to 64.
fn string_report(id: u8, text: &str) -> Vec<u8> {
    let mut out = vec![id];
    out.extend_from_slice(&usb_string(text));
    out.resize(INPUT_REPORT_LEN, 0);
    out
}
