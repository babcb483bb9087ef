//! usbredir byte layouts (protocol 0.7, `usbredirproto.h`): constants and the packet header.
//!
//! All integers are little-endian and all structs packed, so packets are built and read byte
//! by byte; nothing here trusts a length it has not checked.

/// Packet types (`usb_redir_type`), only those this side sends or accepts.
pub mod kind {
    pub const HELLO: u32 = 0;
    pub const DEVICE_CONNECT: u32 = 1;
    pub const DEVICE_DISCONNECT: u32 = 2;
    pub const RESET: u32 = 3;
    pub const INTERFACE_INFO: u32 = 4;
    pub const EP_INFO: u32 = 5;
    pub const SET_CONFIGURATION: u32 = 6;
    pub const GET_CONFIGURATION: u32 = 7;
    pub const CONFIGURATION_STATUS: u32 = 8;
    pub const SET_ALT_SETTING: u32 = 9;
    pub const GET_ALT_SETTING: u32 = 10;
    pub const ALT_SETTING_STATUS: u32 = 11;
    pub const START_INTERRUPT_RECEIVING: u32 = 15;
    pub const STOP_INTERRUPT_RECEIVING: u32 = 16;
    pub const INTERRUPT_RECEIVING_STATUS: u32 = 17;
    pub const CANCEL_DATA_PACKET: u32 = 21;
    pub const FILTER_REJECT: u32 = 22;
    pub const FILTER_FILTER: u32 = 23;
    pub const DEVICE_DISCONNECT_ACK: u32 = 24;
    pub const CONTROL_PACKET: u32 = 100;
    pub const INTERRUPT_PACKET: u32 = 103;
}

/// Capability bits (word 0 of the hello's caps array).
pub mod cap {
    pub const CONNECT_DEVICE_VERSION: u32 = 1 << 1;
    pub const DEVICE_DISCONNECT_ACK: u32 = 1 << 3;
    pub const EP_INFO_MAX_PACKET_SIZE: u32 = 1 << 4;
    pub const IDS_64BIT: u32 = 1 << 5;
    pub const BULK_LENGTH_32BIT: u32 = 1 << 6;
}

/// Status codes (`usb_redir_status`).
pub mod status {
    pub const SUCCESS: u8 = 0;
    pub const INVAL: u8 = 2;
    pub const IOERROR: u8 = 3;
    pub const STALL: u8 = 4;
}

/// Our caps, 0x7a (docs/protocols.md §1.3): QEMU's xHCI check needs ep_info_max_packet_size,
/// 64bits_ids and 32bits_bulk_length (we never send bulk data; it is announced only for that
/// check); no bulk streams, filter or bulk receiving, so none of their packets can arrive.
pub const OUR_CAPS: u32 = cap::CONNECT_DEVICE_VERSION
    | cap::DEVICE_DISCONNECT_ACK
    | cap::EP_INFO_MAX_PACKET_SIZE
    | cap::IDS_64BIT
    | cap::BULK_LENGTH_32BIT;

/// Length of the free-text version field that starts a hello.
pub const HELLO_VERSION_LEN: usize = 64;

pub const HEADER_LEN_32: usize = 12;
pub const HEADER_LEN_64: usize = 16;

/// The largest body accepted from the peer: a control or interrupt packet carrying the most
/// data a 16-bit length can announce. Anything longer is a protocol error, which bounds the
/// memory a peer can make us buffer.
pub const MAX_BODY: u32 = 10 + u16::MAX as u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub length: u32,
    pub id: u64,
}

impl Header {
    /// Decodes a header of `header_len` (12 or 16) bytes from the start of `buf`, or `None`
    /// while fewer bytes have arrived.
    pub fn decode(buf: &[u8], header_len: usize) -> Option<Header> {
        let bytes = buf.get(..header_len)?;
        let kind = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let length = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let id = match header_len {
            HEADER_LEN_64 => u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
            _ => u64::from(u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?)),
        };
        Some(Header { kind, length, id })
    }
}

/// One whole packet: header (12 or 16 bytes) + `body` (type header and data).
pub fn encode(kind: u32, id: u64, body: &[u8], header_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len + body.len());
    out.extend_from_slice(&kind.to_le_bytes());
    // Bodies are built by us from bounded parts (at most MAX_BODY), so this never saturates.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    if header_len == HEADER_LEN_64 {
        out.extend_from_slice(&id.to_le_bytes());
    } else {
        // 32-bit ids: a peer without 64bits_ids only ever sends 32-bit ids, so replies fit.
        out.extend_from_slice(&(id as u32).to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The control-packet type header (10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlHeader {
    pub endpoint: u8,
    pub request: u8,
    pub request_type: u8,
    pub status: u8,
    pub value: u16,
    pub index: u16,
    pub length: u16,
}

impl ControlHeader {
    pub const LEN: usize = 10;

    pub fn decode(b: &[u8]) -> Option<ControlHeader> {
        let b: &[u8; Self::LEN] = b.get(..Self::LEN)?.try_into().ok()?;
        Some(ControlHeader {
            endpoint: b[0],
            request: b[1],
            request_type: b[2],
            status: b[3],
            value: u16::from_le_bytes([b[4], b[5]]),
            index: u16::from_le_bytes([b[6], b[7]]),
            length: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let [v0, v1] = self.value.to_le_bytes();
        let [i0, i1] = self.index.to_le_bytes();
        let [l0, l1] = self.length.to_le_bytes();
        [self.endpoint, self.request, self.request_type, self.status, v0, v1, i0, i1, l0, l1]
    }
}

/// The interrupt-packet type header (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptHeader {
    pub endpoint: u8,
    pub status: u8,
    pub length: u16,
}

impl InterruptHeader {
    pub const LEN: usize = 4;

    pub fn decode(b: &[u8]) -> Option<InterruptHeader> {
        let b: &[u8; Self::LEN] = b.get(..Self::LEN)?.try_into().ok()?;
        Some(InterruptHeader { endpoint: b[0], status: b[1], length: u16::from_le_bytes([b[2], b[3]]) })
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let [l0, l1] = self.length.to_le_bytes();
        [self.endpoint, self.status, l0, l1]
    }
}

/// ep_info / interrupt-status index of an endpoint address: OUT 0..15, IN 16..31.
pub fn ep_index(address: u8) -> usize {
    usize::from(((address & 0x80) >> 3) | (address & 0x0f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_both_widths() {
        let p = encode(kind::CONTROL_PACKET, 0x1_0000_0002, &[1, 2], HEADER_LEN_64);
        assert_eq!(p[..16], [100, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(Header::decode(&p, HEADER_LEN_64), Some(Header { kind: 100, length: 2, id: 0x1_0000_0002 }));
        let p = encode(kind::HELLO, 7, &[], HEADER_LEN_32);
        assert_eq!(p, [0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(Header::decode(&p, HEADER_LEN_32), Some(Header { kind: 0, length: 0, id: 7 }));
        assert_eq!(Header::decode(&p[..11], HEADER_LEN_32), None);
    }

    #[test]
    fn ep_index_matches_ep2i() {
        assert_eq!(
            (ep_index(0x00), ep_index(0x80), ep_index(0x01), ep_index(0x81), ep_index(0x8f)),
            (0, 16, 1, 17, 31)
        );
    }
}
