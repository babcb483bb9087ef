//! The device-exporting ("usb-host") side of the usb-redirection protocol, as QEMU's
//! `usb-redir` device expects it (docs/protocols.md §1).
//!
//! Hand-written because no crate implements the device side usably: `usbredirparser` 0.4 is a
//! stub whose callbacks are `unimplemented!()` and which hard-codes the guest role,
//! `usbredirhost` needs a real libusb device, and `usbredir-proto` is not published
//! (docs/protocols.md §1.6). The protocol is small: a header, ~15 packed little-endian packets.
//!
//! Layers: [`wire`] holds byte layouts; [`Session`] is the sans-IO protocol state machine
//! (bytes in, packets out) in front of any [`UsbDevice`]; [`driver`] serves one connection
//! over a unix socket with threads and lets another thread unplug the device.

pub mod driver;
mod session;
pub mod wire;

pub use session::{ProtocolError, Session};

/// A SETUP packet as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub request_type: u8,
    pub request: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl Setup {
    /// Device-to-host (IN) data stage.
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// The device refuses a request (a STALL handshake on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    Low = 0,
    Full = 1,
    High = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
}

/// A non-control endpoint. Only interrupt endpoints are modelled: nothing here needs bulk or
/// iso, and not announcing them keeps their packets out of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptEndpoint {
    /// Endpoint address; bit 7 set for IN.
    pub address: u8,
    pub interface: u8,
    /// bInterval; QEMU rejects 0 for interrupt endpoints.
    pub interval: u8,
    pub max_packet_size: u16,
}

/// What `device_connect`, `interface_info` and `ep_info` announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub speed: Speed,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub device_version_bcd: u16,
    pub ep0_max_packet_size: u16,
    pub interfaces: Vec<Interface>,
    pub endpoints: Vec<InterruptEndpoint>,
}

/// What a device asks of its link, to inject surprise removals at a precise moment (for
/// example when the Nth I2C transfer starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRequest {
    /// Send `device_disconnect` on the live link (the guest sees an unplug; QEMU keeps the
    /// `usb-redir` device and the chardev).
    Disconnect,
    /// Close the socket without a word.
    Close,
}

/// A USB device behind the link. Calls are synchronous: the device answers at once.
pub trait UsbDevice {
    fn info(&self) -> DeviceInfo;
    /// A control transfer on EP0. For IN requests the reply is at most `setup.length` bytes
    /// (the session truncates longer replies); for OUT requests `data` is the data stage and
    /// the returned bytes are ignored.
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Result<Vec<u8>, Stall>;
    /// Data the guest sent on an interrupt OUT endpoint.
    fn interrupt_out(&mut self, endpoint: u8, data: &[u8]);
    /// The next report for an interrupt IN endpoint, as `(endpoint address, data)`.
    fn poll_in(&mut self) -> Option<(u8, Vec<u8>)>;
    /// A bus reset: forget transient state (addressing is QEMU's business).
    fn reset(&mut self);
    /// A pending request to drop the link (fault injection); taken once.
    fn link_request(&mut self) -> Option<LinkRequest> {
        None
    }
    /// How long to hold replies back before sending them (fault injection: widens race
    /// windows in the guest).
    fn reply_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
