//! The sans-IO usbredir state machine of the usb-host side: bytes from the peer go in through
//! [`Session::receive`], whole packets to send come out of [`Session::poll_transmit`].

use std::collections::VecDeque;

use super::wire::{self, cap, kind, status, ControlHeader, Header, InterruptHeader, MAX_BODY, OUR_CAPS};
use super::{DeviceInfo, Setup, UsbDevice};

/// Why the peer's traffic cannot be served. The session is unusable afterwards; the caller
/// drops the connection, which the guest sees as an unplug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("packet type {kind} arrived before the peer's hello")]
    BeforeHello { kind: u32 },
    #[error("the peer sent a second hello")]
    DuplicateHello,
    #[error("packet type {kind} announces {length} bytes, more than the limit of {limit}")]
    TooLong { kind: u32, length: u32, limit: u32 },
    #[error("packet type {kind} has {length} bytes, expected {expected}")]
    BadLength { kind: u32, length: usize, expected: usize },
    #[error("packet type {kind} has {length} bytes, fewer than its {minimum}-byte type header")]
    TooShort { kind: u32, length: usize, minimum: usize },
    #[error("packet type {kind} for endpoint {endpoint:#04x} carries {data} data bytes against its direction or length field ({length})")]
    Direction { kind: u32, endpoint: u8, length: u16, data: usize },
    #[error("packet type {0} is not one a usb-guest sends")]
    UnknownType(u32),
}

/// Reports kept for IN endpoints the guest has not started; QEMU drops reports pushed to a
/// stopped endpoint, so they wait here. Bounded: a guest that never starts the endpoint must
/// not make us grow without limit (the oldest report goes first, as a real FIFO would overrun).
const MAX_PENDING_IN: usize = 64;

/// The version string of our hello (free text, for QEMU's debug log).
const VERSION: &str = "unplug-torture usbredir device 0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No device announced (before the hello, or after an acknowledged disconnect).
    Detached,
    Attached,
    /// `device_disconnect` sent, ack not yet seen; `replug` once it arrives if asked to.
    AwaitingAck {
        replug: bool,
    },
}

pub struct Session {
    info: DeviceInfo,
    rx: Vec<u8>,
    tx: VecDeque<Vec<u8>>,
    /// The peer's caps word, once its hello has been read.
    peer_caps: Option<u32>,
    link: Link,
    configuration: u8,
    /// Bit n: interrupt IN endpoint n has been started by the peer.
    started_in: u16,
    pending_in: VecDeque<(u8, Vec<u8>)>,
    next_in_id: u64,
    failed: Option<ProtocolError>,
}

impl Session {
    /// A session for a device described by `info`; our hello is queued at once (the protocol
    /// lets both sides send hellos without waiting).
    pub fn new(info: DeviceInfo) -> Session {
        let mut hello = vec![0u8; wire::HELLO_VERSION_LEN];
        // Leave at least one NUL: the field is a C string.
        let n = VERSION.len().min(wire::HELLO_VERSION_LEN - 1);
        hello[..n].copy_from_slice(&VERSION.as_bytes()[..n]);
        hello.extend_from_slice(&OUR_CAPS.to_le_bytes());
        let mut tx = VecDeque::new();
        tx.push_back(wire::encode(kind::HELLO, 0, &hello, wire::HEADER_LEN_32));
        Session {
            info,
            rx: Vec::new(),
            tx,
            peer_caps: None,
            link: Link::Detached,
            configuration: 0,
            started_in: 0,
            pending_in: VecDeque::new(),
            next_in_id: 0,
            failed: None,
        }
    }

    /// True while the guest can see the device.
    pub fn is_attached(&self) -> bool {
        self.link == Link::Attached
    }

    /// The next packet to write, whole.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Feeds bytes read from the peer, serving every complete packet with `device`. After an
    /// error, every later call returns the same error.
    pub fn receive(&mut self, bytes: &[u8], device: &mut dyn UsbDevice) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut buf = std::mem::take(&mut self.rx);
        buf.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            let rest = buf.get(at..).unwrap_or_default();
            let header_len = self.header_len();
            let Some(header) = Header::decode(rest, header_len) else { break Ok(()) };
            if header.length > MAX_BODY {
                break Err(ProtocolError::TooLong { kind: header.kind, length: header.length, limit: MAX_BODY });
            }
            // Bounded by MAX_BODY above, so no overflow.
            let total = header_len + header.length as usize;
            let Some(body) = rest.get(header_len..total) else { break Ok(()) };
            at += total;
            if let Err(e) = self.handle(header, body, device) {
                break Err(e);
            }
        };
        match result {
            Ok(()) => {
                buf.drain(..at.min(buf.len()));
                self.rx = buf;
                self.pump(device);
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Moves the device's IN reports out to started endpoints (and queues the others).
    pub fn pump(&mut self, device: &mut dyn UsbDevice) {
        while let Some(report) = device.poll_in() {
            if self.pending_in.len() == MAX_PENDING_IN {
                tracing::warn!(
                    endpoint = report.0,
                    "IN queue full while the endpoint is stopped: dropping the oldest report"
                );
                self.pending_in.pop_front();
            }
            self.pending_in.push_back(report);
        }
        if self.link != Link::Attached {
            return;
        }
        let pending = std::mem::take(&mut self.pending_in);
        for (endpoint, data) in pending {
            if self.started_in & in_bit(endpoint) == 0 {
                self.pending_in.push_back((endpoint, data));
                continue;
            }
            let length = u16::try_from(data.len()).unwrap_or(u16::MAX);
            let mut body = InterruptHeader { endpoint, status: status::SUCCESS, length }.encode().to_vec();
            body.extend_from_slice(data.get(..usize::from(length)).unwrap_or(&data));
            let id = self.next_in_id;
            self.next_in_id = self.next_in_id.wrapping_add(1);
            self.send(kind::INTERRUPT_PACKET, id, &body);
        }
    }

    /// Surprise unplug on a live link: `device_disconnect`. QEMU detaches the device and, since
    /// both sides hold the ack cap, acknowledges.
    pub fn disconnect(&mut self) {
        if self.link != Link::Attached {
            return;
        }
        self.send(kind::DEVICE_DISCONNECT, 0, &[]);
        self.link =
            if self.both(cap::DEVICE_DISCONNECT_ACK) { Link::AwaitingAck { replug: false } } else { Link::Detached };
        self.started_in = 0;
        self.pending_in.clear();
    }

    /// Re-plug after [`Session::disconnect`]: announces the device again, after the peer's ack
    /// if it has not arrived yet (QEMU would otherwise take the new announcement for the old).
    pub fn connect(&mut self) {
        match self.link {
            Link::Detached if self.peer_caps.is_some() => self.attach(),
            Link::AwaitingAck { .. } => self.link = Link::AwaitingAck { replug: true },
            Link::Detached | Link::Attached => {}
        }
    }

    fn both(&self, cap: u32) -> bool {
        OUR_CAPS & cap != 0 && self.peer_caps.is_some_and(|peer| peer & cap != 0)
    }

    /// 12-byte headers until the peer's hello, then 16 iff both sides have 64bits_ids.
    fn header_len(&self) -> usize {
        if self.both(cap::IDS_64BIT) {
            wire::HEADER_LEN_64
        } else {
            wire::HEADER_LEN_32
        }
    }

    fn send(&mut self, kind: u32, id: u64, body: &[u8]) {
        let packet = wire::encode(kind, id, body, self.header_len());
        self.tx.push_back(packet);
    }

    fn handle(&mut self, header: Header, body: &[u8], device: &mut dyn UsbDevice) -> Result<(), ProtocolError> {
        let Header { kind: k, id, .. } = header;
        if self.peer_caps.is_none() && k != kind::HELLO {
            return Err(ProtocolError::BeforeHello { kind: k });
        }
        match k {
            kind::HELLO => {
                if self.peer_caps.is_some() {
                    return Err(ProtocolError::DuplicateHello);
                }
                let caps = body.get(wire::HELLO_VERSION_LEN..).ok_or(ProtocolError::TooShort {
                    kind: k,
                    length: body.len(),
                    minimum: wire::HELLO_VERSION_LEN,
                })?;
                // Only caps word 0 is defined; a hello without caps announces none.
                let word = caps.get(..4).map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                self.peer_caps = Some(word);
                self.attach();
            }
            kind::RESET => {
                fixed::<0>(k, body)?;
                // Reports queued before the reset belong to the old enumeration.
                self.pending_in.clear();
                device.reset();
            }
            kind::SET_CONFIGURATION => {
                let [configuration] = fixed(k, body)?;
                // One configuration (value 1); 0 unconfigures. QEMU stops interrupt endpoints
                // before changing configuration and restarts them afterwards.
                let status = if configuration <= 1 {
                    self.configuration = configuration;
                    self.started_in = 0;
                    status::SUCCESS
                } else {
                    status::INVAL
                };
                self.send(kind::CONFIGURATION_STATUS, id, &[status, self.configuration]);
            }
            kind::GET_CONFIGURATION => {
                fixed::<0>(k, body)?;
                self.send(kind::CONFIGURATION_STATUS, id, &[status::SUCCESS, self.configuration]);
            }
            kind::SET_ALT_SETTING => {
                let [interface, alt] = fixed(k, body)?;
                let ok = alt == 0 && self.has_interface(interface);
                self.send(kind::ALT_SETTING_STATUS, id, &[status_of(ok), interface, 0]);
            }
            kind::GET_ALT_SETTING => {
                let [interface] = fixed(k, body)?;
                let ok = self.has_interface(interface);
                // usbredirhost reports alt -1 for an unknown interface.
                self.send(kind::ALT_SETTING_STATUS, id, &[status_of(ok), interface, if ok { 0 } else { 0xff }]);
            }
            kind::START_INTERRUPT_RECEIVING | kind::STOP_INTERRUPT_RECEIVING => {
                let [endpoint] = fixed(k, body)?;
                let ok = endpoint & 0x80 != 0 && self.info.endpoints.iter().any(|e| e.address == endpoint);
                if ok {
                    if k == kind::START_INTERRUPT_RECEIVING {
                        self.started_in |= in_bit(endpoint);
                    } else {
                        self.started_in &= !in_bit(endpoint);
                    }
                }
                self.send(kind::INTERRUPT_RECEIVING_STATUS, id, &[status_of(ok), endpoint]);
            }
            // Every packet is answered before the next is read, so nothing is ever in flight
            // to cancel.
            kind::CANCEL_DATA_PACKET => fixed::<0>(k, body).map(drop)?,
            // We do not announce the filter cap; a peer that filters anyway is ignored.
            kind::FILTER_REJECT | kind::FILTER_FILTER => {}
            kind::DEVICE_DISCONNECT_ACK => {
                fixed::<0>(k, body)?;
                match self.link {
                    Link::AwaitingAck { replug } => {
                        self.link = Link::Detached;
                        if replug {
                            self.attach();
                        }
                    }
                    _ => tracing::warn!("device_disconnect_ack without a disconnect: ignored"),
                }
            }
            kind::CONTROL_PACKET => self.control(id, body, device)?,
            kind::INTERRUPT_PACKET => self.interrupt(id, body, device)?,
            other => return Err(ProtocolError::UnknownType(other)),
        }
        Ok(())
    }

    fn has_interface(&self, number: u8) -> bool {
        self.info.interfaces.iter().any(|i| i.number == number)
    }

    /// Control and interrupt packets that reach us while the device is unplugged (QEMU had
    /// them in flight when our `device_disconnect` went out) fail with an I/O error and never
    /// reach the device: a pulled device answers nothing, which is what makes an unplug
    /// land in the middle of a transfer.
    fn control(&mut self, id: u64, body: &[u8], device: &mut dyn UsbDevice) -> Result<(), ProtocolError> {
        let k = kind::CONTROL_PACKET;
        let mut header = ControlHeader::decode(body).ok_or(ProtocolError::TooShort {
            kind: k,
            length: body.len(),
            minimum: ControlHeader::LEN,
        })?;
        let data = body.get(ControlHeader::LEN..).unwrap_or_default();
        let is_in = header.endpoint & 0x80 != 0;
        // usbredirparser's direction rule: data only in the endpoint's direction, exactly
        // `length` of it; the SETUP direction bit must agree with the endpoint.
        let data_ok = if is_in { data.is_empty() } else { data.len() == usize::from(header.length) };
        if !data_ok || (header.endpoint ^ header.request_type) & 0x80 != 0 {
            return Err(ProtocolError::Direction {
                kind: k,
                endpoint: header.endpoint,
                length: header.length,
                data: data.len(),
            });
        }
        let setup = Setup {
            request_type: header.request_type,
            request: header.request,
            value: header.value,
            index: header.index,
            length: header.length,
        };
        let mut out = Vec::new();
        if self.link != Link::Attached {
            header.status = status::IOERROR;
            header.length = 0;
            out.extend_from_slice(&header.encode());
            self.send(k, id, &out);
            return Ok(());
        }
        // Only EP0 is a control endpoint.
        let reply = if header.endpoint & 0x7f == 0 { device.control(&setup, data) } else { Err(super::Stall) };
        match reply {
            Ok(mut reply) if is_in => {
                reply.truncate(usize::from(header.length));
                header.status = status::SUCCESS;
                header.length = u16::try_from(reply.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&header.encode());
                out.extend_from_slice(&reply);
            }
            Ok(_) => {
                header.status = status::SUCCESS;
                out.extend_from_slice(&header.encode());
            }
            Err(super::Stall) => {
                header.status = status::STALL;
                header.length = 0;
                out.extend_from_slice(&header.encode());
            }
        }
        self.send(k, id, &out);
        Ok(())
    }

    fn interrupt(&mut self, id: u64, body: &[u8], device: &mut dyn UsbDevice) -> Result<(), ProtocolError> {
        let k = kind::INTERRUPT_PACKET;
        let mut header = InterruptHeader::decode(body).ok_or(ProtocolError::TooShort {
            kind: k,
            length: body.len(),
            minimum: InterruptHeader::LEN,
        })?;
        let data = body.get(InterruptHeader::LEN..).unwrap_or_default();
        let is_in = header.endpoint & 0x80 != 0;
        let data_ok = if is_in { data.is_empty() } else { data.len() == usize::from(header.length) };
        if !data_ok {
            return Err(ProtocolError::Direction {
                kind: k,
                endpoint: header.endpoint,
                length: header.length,
                data: data.len(),
            });
        }
        // IN data is pushed after start_interrupt_receiving, never requested packet by packet.
        let known = !is_in && self.info.endpoints.iter().any(|e| e.address == header.endpoint);
        if self.link != Link::Attached {
            header.status = status::IOERROR;
            header.length = 0;
        } else if known {
            device.interrupt_out(header.endpoint, data);
            header.status = status::SUCCESS;
        } else {
            header.status = status::STALL;
            header.length = 0;
        }
        self.send(k, id, &header.encode());
        Ok(())
    }

    /// interface_info, ep_info, device_connect: QEMU rejects a device_connect that is not
    /// preceded by the other two.
    fn attach(&mut self) {
        const SLOTS: usize = 32;
        let info = self.info.clone();
        let interfaces = &info.interfaces[..info.interfaces.len().min(SLOTS)];
        let mut body = u32::try_from(interfaces.len()).unwrap_or(0).to_le_bytes().to_vec();
        let columns: [fn(&super::Interface) -> u8; 4] = [|i| i.number, |i| i.class, |i| i.subclass, |i| i.protocol];
        for field in columns {
            let mut column = [0u8; SLOTS];
            for (slot, interface) in column.iter_mut().zip(interfaces) {
                *slot = field(interface);
            }
            body.extend_from_slice(&column);
        }
        self.send(kind::INTERFACE_INFO, 0, &body);

        const INVALID: u8 = 0xff;
        const CONTROL: u8 = 0;
        const INTERRUPT: u8 = 3;
        let mut kinds = [INVALID; SLOTS];
        let mut intervals = [0u8; SLOTS];
        let mut interface_of = [0u8; SLOTS];
        let mut max_packet = [0u16; SLOTS];
        for index in [wire::ep_index(0x00), wire::ep_index(0x80)] {
            kinds[index] = CONTROL;
            max_packet[index] = info.ep0_max_packet_size;
        }
        for e in &info.endpoints {
            let index = wire::ep_index(e.address);
            kinds[index] = INTERRUPT;
            intervals[index] = e.interval;
            interface_of[index] = e.interface;
            max_packet[index] = e.max_packet_size;
        }
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(&kinds);
        body.extend_from_slice(&intervals);
        body.extend_from_slice(&interface_of);
        if self.both(cap::EP_INFO_MAX_PACKET_SIZE) {
            body.extend(max_packet.iter().flat_map(|m| m.to_le_bytes()));
        }
        self.send(kind::EP_INFO, 0, &body);

        let mut body = vec![info.speed as u8, info.class, info.subclass, info.protocol];
        body.extend_from_slice(&info.vendor_id.to_le_bytes());
        body.extend_from_slice(&info.product_id.to_le_bytes());
        if self.both(cap::CONNECT_DEVICE_VERSION) {
            body.extend_from_slice(&info.device_version_bcd.to_le_bytes());
        }
        self.send(kind::DEVICE_CONNECT, 0, &body);
        self.link = Link::Attached;
    }
}

fn in_bit(endpoint: u8) -> u16 {
    1 << (endpoint & 0x0f)
}

fn status_of(ok: bool) -> u8 {
    if ok {
        status::SUCCESS
    } else {
        status::INVAL
    }
}

/// The body of a packet whose type header has a fixed size and no data.
fn fixed<const N: usize>(kind: u32, body: &[u8]) -> Result<[u8; N], ProtocolError> {
    body.try_into().map_err(|_| ProtocolError::BadLength { kind, length: body.len(), expected: N })
}
