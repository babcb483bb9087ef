//! A scripted usb-guest (QEMU's side of usb-redir) for byte-level tests.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::{Arc, Mutex};

use devices::at24::{At24, At24Kind};
use devices::cp2112::Cp2112;
use devices::usbredir::{Session, UsbDevice};

/// QEMU 7.2's caps word.
pub const QEMU_CAPS: u32 = 0xff;

pub fn u16le(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

/// A packet as QEMU would send it, with a 12- or 16-byte header.
pub fn packet(kind: u32, id: u64, body: &[u8], wide: bool) -> Vec<u8> {
    let mut p = kind.to_le_bytes().to_vec();
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    if wide {
        p.extend_from_slice(&id.to_le_bytes());
    } else {
        p.extend_from_slice(&(id as u32).to_le_bytes());
    }
    p.extend_from_slice(body);
    p
}

pub fn hello(caps: u32) -> Vec<u8> {
    let mut body = b"qemu usb-redir guest 7.2.22".to_vec();
    body.resize(64, 0);
    body.extend_from_slice(&caps.to_le_bytes());
    packet(0, 0, &body, false)
}

/// A control packet body: endpoint, request, requesttype, status, value, index, length (+ data).
pub fn control(request_type: u8, request: u8, value: u16, index: u16, length: u16, data: &[u8]) -> Vec<u8> {
    let mut b = vec![request_type & 0x80, request, request_type, 0];
    b.extend_from_slice(&u16le(value));
    b.extend_from_slice(&u16le(index));
    b.extend_from_slice(&u16le(length));
    b.extend_from_slice(data);
    b
}

/// An interrupt OUT packet body on EP1.
pub fn interrupt_out(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0x01, 0];
    b.extend_from_slice(&u16le(data.len() as u16));
    b.extend_from_slice(data);
    b
}

/// A parsed packet from the device (16-byte headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub kind: u32,
    pub id: u64,
    pub body: Vec<u8>,
}

pub fn parse16(p: &[u8]) -> Out {
    assert!(p.len() >= 16, "short packet {p:?}");
    let kind = u32::from_le_bytes(p[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, p.len() - 16, "length field of {p:?}");
    Out { kind, id: u64::from_le_bytes(p[8..16].try_into().unwrap()), body: p[16..].to_vec() }
}

/// A session past the hello exchange with the CP2112 attached, and an at24 shared with the
/// test.
pub struct Rig {
    pub session: Session,
    pub device: Cp2112,
    pub eeprom: Arc<Mutex<At24>>,
    next_id: u64,
}

impl Rig {
    pub fn new() -> Rig {
        let device = Cp2112::new();
        let eeprom = Arc::new(Mutex::new(At24::new(At24Kind::C02)));
        device.attach(0x50, Box::new(eeprom.clone())).unwrap();
        let mut session = Session::new(device.info());
        let mut d = device.clone();
        session.receive(&hello(QEMU_CAPS), &mut d).unwrap();
        let mut rig = Rig { session, device, eeprom, next_id: 1 };
        let connect = rig.drain();
        assert_eq!(connect.len(), 4, "hello + interface_info + ep_info + device_connect");
        rig
    }

    /// Sends one packet (16-byte header), returns everything the device answered (parsed).
    pub fn send(&mut self, kind: u32, body: &[u8]) -> Vec<Out> {
        let id = self.next_id;
        self.next_id += 1;
        let mut d = self.device.clone();
        self.session.receive(&packet(kind, id, body, true), &mut d).unwrap();
        self.drain().iter().map(|p| parse16(p)).collect()
    }

    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.session.poll_transmit()).collect()
    }

    /// A control IN request; returns (status, data).
    pub fn control_in(&mut self, request_type: u8, request: u8, value: u16, index: u16, length: u16) -> (u8, Vec<u8>) {
        let out = self.send(100, &control(request_type, request, value, index, length, &[]));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].kind, 100);
        let b = &out[0].body;
        assert_eq!(b[..3], [0x80, request, request_type]);
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!(len, b.len() - 10, "reply length field");
        (b[3], b[10..].to_vec())
    }

    /// A control OUT request; returns (status, acknowledged length).
    pub fn control_out(&mut self, request_type: u8, request: u8, value: u16, index: u16, data: &[u8]) -> (u8, u16) {
        let out = self.send(100, &control(request_type, request, value, index, data.len() as u16, data));
        assert_eq!(out.len(), 1, "{out:?}");
        let b = &out[0].body;
        assert_eq!(b.len(), 10, "OUT replies carry no data");
        (b[3], u16::from_le_bytes([b[8], b[9]]))
    }

    /// Starts interrupt receiving on EP1 IN.
    pub fn start_in(&mut self) {
        let out = self.send(15, &[0x81]);
        assert_eq!(out, vec![Out { kind: 17, id: self.next_id - 1, body: vec![0, 0x81] }]);
    }

    /// An output report on EP1 OUT; returns the IN reports it produced (after the OUT ack).
    pub fn report(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let out = self.send(103, &interrupt_out(data));
        assert_eq!(out[0].kind, 103);
        assert_eq!(out[0].body, [&[0x01, 0][..], &u16le(data.len() as u16)].concat(), "OUT ack");
        out[1..]
            .iter()
            .map(|o| {
                assert_eq!(o.kind, 103);
                assert_eq!(o.body[..2], [0x81, 0]);
                let len = u16::from_le_bytes([o.body[2], o.body[3]]) as usize;
                assert_eq!(len, o.body.len() - 4);
                o.body[4..].to_vec()
            })
            .collect()
    }
}
