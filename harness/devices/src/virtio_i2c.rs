//! The virtio-i2c request protocol (virtio 1.2 "I2C Adapter Device", Linux's
//! `include/uapi/linux/virtio_i2c.h`), device side, over the [`I2cBus`] model.
//!
//! One I2C message is one descriptor chain:
//!
//! ```text
//! struct virtio_i2c_out_hdr { le16 addr; le16 padding; le32 flags; }  device-readable, 8 bytes
//! u8 buf[len]               optional: device-readable (write) or device-writable (read)
//! struct virtio_i2c_in_hdr  { u8 status; }                            device-writable, 1 byte
//! ```
//!
//! A chain without `buf` is a zero-length request (`VIRTIO_I2C_F_ZERO_LENGTH_REQUEST`, which
//! Linux's driver requires): an SMBus quick read or write. `addr` is the 7-bit address shifted
//! left by one. `VIRTIO_I2C_FLAGS_FAIL_NEXT` is set on every message of one `i2c_transfer`
//! but the last: once one of them fails, the device fails the rest of the group.
//!
//! Sans-IO: [`Layout::of`] checks a chain's shape (descriptor directions and lengths, all
//! explicit, bounded), [`OutHdr::decode`] the header bytes, and [`Adapter::execute`] runs one
//! message against the bus. The vhost-user transport (guest memory, the virtqueue) lives in
//! `harness::devices::vhost_i2c`. A malformed chain is a [`ChainError`], never a panic.
//!
//! Faults ([`Faults`], a scenario's `fault:` step) are decided here and carried out by the
//! transport: [`Adapter::admit`] says, before each chain, whether to answer it (after a delay)
//! or to vanish with it unanswered; NAK and error make [`Adapter::execute`] fail messages.

use std::time::Duration;

use crate::i2c::I2cBus;

/// `sizeof(struct virtio_i2c_out_hdr)`.
pub const OUT_HDR_LEN: u32 = 8;
/// `sizeof(struct virtio_i2c_in_hdr)`.
pub const IN_HDR_LEN: u32 = 1;
/// `VIRTIO_I2C_FLAGS_FAIL_NEXT`: fail the following messages of this transfer if this one fails.
pub const FLAG_FAIL_NEXT: u32 = 1 << 0;
/// `VIRTIO_I2C_FLAGS_M_RD`: a read message.
pub const FLAG_M_RD: u32 = 1 << 1;
/// `VIRTIO_I2C_MSG_OK`.
pub const STATUS_OK: u8 = 0;
/// `VIRTIO_I2C_MSG_ERR`.
pub const STATUS_ERR: u8 = 1;
/// Feature bit `VIRTIO_I2C_F_ZERO_LENGTH_REQUEST`.
pub const F_ZERO_LENGTH_REQUEST: u64 = 1 << 0;
/// An I2C message's length is a `u16` in Linux (`struct i2c_msg.len`); nothing longer is real.
pub const MAX_MESSAGE_LEN: u32 = u16::MAX as u32;
/// The longest chain a well-formed request has (out_hdr, buf, in_hdr).
pub const MAX_DESCRIPTORS: usize = 3;

/// One descriptor as the device sees it: who may write it and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub writable: bool,
    pub len: u32,
}

impl Segment {
    pub fn readable(len: u32) -> Segment {
        Segment { writable: false, len }
    }
    pub fn writable(len: u32) -> Segment {
        Segment { writable: true, len }
    }
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a request chain has 2 or 3 descriptors, this one has {0}")]
    Descriptors(usize),
    #[error("the out header must be a device-readable descriptor of {OUT_HDR_LEN} bytes (got {len}, writable {writable})")]
    OutHeader { len: u32, writable: bool },
    #[error("the in header must be a device-writable descriptor of {IN_HDR_LEN} byte (got {len}, writable {writable})")]
    InHeader { len: u32, writable: bool },
    #[error("the buffer descriptor is empty")]
    EmptyBuffer,
    #[error("the buffer is {0} bytes, longer than any I2C message ({MAX_MESSAGE_LEN})")]
    BufferTooLong(u32),
    #[error("the buffer's direction (writable {writable}) does not match the read flag ({read})")]
    Direction { writable: bool, read: bool },
    #[error("the out header is {0} bytes, not {OUT_HDR_LEN}")]
    HeaderBytes(usize),
}

/// The shape of a well-formed chain: where the message's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// out_hdr + in_hdr.
    ZeroLength,
    /// out_hdr + a device-readable buffer of this many bytes + in_hdr.
    Write(u32),
    /// out_hdr + a device-writable buffer of this many bytes + in_hdr.
    Read(u32),
}

impl Layout {
    /// Checks a chain's descriptors (in chain order).
    pub fn of(segments: &[Segment]) -> Result<Layout, ChainError> {
        let (first, last, middle) = match segments {
            [first, last] => (first, last, None),
            [first, middle, last] => (first, last, Some(middle)),
            other => return Err(ChainError::Descriptors(other.len())),
        };
        if first.writable || first.len != OUT_HDR_LEN {
            return Err(ChainError::OutHeader { len: first.len, writable: first.writable });
        }
        if !last.writable || last.len != IN_HDR_LEN {
            return Err(ChainError::InHeader { len: last.len, writable: last.writable });
        }
        Ok(match middle {
            None => Layout::ZeroLength,
            Some(m) if m.len == 0 => return Err(ChainError::EmptyBuffer),
            Some(m) if m.len > MAX_MESSAGE_LEN => return Err(ChainError::BufferTooLong(m.len)),
            Some(m) if m.writable => Layout::Read(m.len),
            Some(m) => Layout::Write(m.len),
        })
    }

    /// The bytes the device writes into the chain on success (read data + status): the used
    /// length.
    pub fn used_len(self) -> u32 {
        match self {
            Layout::Read(len) => len + IN_HDR_LEN,
            Layout::ZeroLength | Layout::Write(_) => IN_HDR_LEN,
        }
    }
}

/// `struct virtio_i2c_out_hdr`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutHdr {
    /// The wire field: the 7-bit address shifted left by one.
    pub addr: u16,
    pub flags: u32,
}

impl OutHdr {
    pub fn decode(bytes: &[u8]) -> Result<OutHdr, ChainError> {
        let bytes: &[u8; 8] = bytes.try_into().map_err(|_| ChainError::HeaderBytes(bytes.len()))?;
        Ok(OutHdr {
            addr: u16::from_le_bytes([bytes[0], bytes[1]]),
            flags: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }

    pub fn encode(&self) -> [u8; 8] {
        let mut out = [0; 8];
        out[..2].copy_from_slice(&self.addr.to_le_bytes());
        out[4..].copy_from_slice(&self.flags.to_le_bytes());
        out
    }

    pub fn read(&self) -> bool {
        self.flags & FLAG_M_RD != 0
    }

    pub fn fail_next(&self) -> bool {
        self.flags & FLAG_FAIL_NEXT != 0
    }

    /// The 7-bit target address, if the field holds one.
    pub fn address(&self) -> Option<u8> {
        u8::try_from(self.addr >> 1).ok().filter(|a| *a <= 0x7f)
    }

    /// Checks that the header's read flag agrees with the chain's buffer direction (a
    /// zero-length request may be either).
    pub fn check(&self, layout: Layout) -> Result<(), ChainError> {
        match layout {
            Layout::Read(_) if !self.read() => Err(ChainError::Direction { writable: true, read: false }),
            Layout::Write(_) if self.read() => Err(ChainError::Direction { writable: false, read: true }),
            _ => Ok(()),
        }
    }
}

/// One message's answer: the status byte and, for a successful read, the data to copy into
/// the chain's buffer (exactly the buffer's length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u8,
    pub data: Vec<u8>,
}

impl Reply {
    fn err() -> Reply {
        Reply { status: STATUS_ERR, data: Vec::new() }
    }
}

/// Counts of what the adapter did, for tests and step records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// I2C transfers started: messages that begin a `FAIL_NEXT` group (one `i2c_transfer` in
    /// Linux, e.g. an at24 read's address write and data read).
    pub transfers: u64,
    pub messages: u64,
    pub reads: u64,
    pub writes: u64,
    pub zero_length: u64,
    /// Messages answered with `STATUS_ERR` (NAK, failed group, malformed).
    pub errors: u64,
    /// Chains rejected as malformed.
    pub malformed: u64,
}

/// Faults the adapter can be told to have, like the CP2112's (`devices::cp2112::Faults`) where
/// virtio-i2c has the same thing. It has one error status, so a NAK and a failed transfer look
/// alike to the guest (`-EIO`); it has no BUSY status and no control endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hold every message's answer back this long (widens race windows in the guest; Linux
    /// waits for each answer without a timeout).
    pub reply_delay: Duration,
    /// Every address NAKs, as if the bus were empty.
    pub nak: bool,
    /// Every message fails, whatever the bus would say.
    pub error: bool,
    /// Vanish when transfer number N (counted from 1 over the adapter's life, see
    /// [`Counters::transfers`]) starts: its first message is never answered and the backend
    /// goes away, as in a surprise removal with a transfer in flight.
    pub vanish_at_transfer: Option<u64>,
}

/// What the transport does with the next chain ([`Adapter::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Answer it, after this delay.
    Serve(Duration),
    /// Leave it and every later chain unanswered and close the connection.
    Vanish,
}

/// The device side of one virtio-i2c adapter: the bus and the `FAIL_NEXT` group state.
pub struct Adapter {
    bus: I2cBus,
    /// A message of the current group failed: the rest of the group fails too.
    failing: bool,
    /// The last message said more of its group follow (`FAIL_NEXT`): the next one starts no
    /// transfer.
    in_group: bool,
    faults: Faults,
    /// Set once a fault made the adapter vanish: nothing is answered any more.
    vanished: bool,
    counters: Counters,
}

impl Adapter {
    pub fn new(bus: I2cBus) -> Adapter {
        Adapter { bus, failing: false, in_group: false, faults: Faults::default(), vanished: false, counters: Counters::default() }
    }

    /// Replaces the faults (`Faults::default()` clears them; a vanished adapter stays gone).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Called once for each chain before it is read: counts the transfer it may start and
    /// says whether to answer it. After [`Admission::Vanish`] every chain is left unanswered.
    pub fn admit(&mut self) -> Admission {
        if self.vanished {
            return Admission::Vanish;
        }
        if !self.in_group {
            self.counters.transfers += 1;
            if self.faults.vanish_at_transfer.is_some_and(|n| self.counters.transfers >= n) {
                self.vanished = true;
                return Admission::Vanish;
            }
        }
        Admission::Serve(self.faults.reply_delay)
    }

    pub fn bus_mut(&mut self) -> &mut I2cBus {
        &mut self.bus
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Runs one message. `layout` is the chain's checked shape, `write_data` the device-readable
    /// buffer's bytes (for [`Layout::Write`]; ignored otherwise).
    pub fn execute(&mut self, hdr: &OutHdr, layout: Layout, write_data: &[u8]) -> Reply {
        self.counters.messages += 1;
        let reply = if self.failing {
            Reply::err()
        } else if hdr.check(layout).is_err() {
            self.counters.malformed += 1;
            Reply::err()
        } else if self.faults.error {
            Reply::err()
        } else {
            self.run(hdr, layout, write_data)
        };
        if reply.status != STATUS_OK {
            self.counters.errors += 1;
        }
        // The group ends with this message unless it says more follow.
        self.failing = reply.status != STATUS_OK && hdr.fail_next();
        self.in_group = hdr.fail_next();
        reply
    }

    /// A chain whose shape or header could not be read: its group (if the header said one
    /// goes on) fails. Returns nothing to write but the status.
    pub fn malformed(&mut self, hdr: Option<&OutHdr>) {
        self.counters.messages += 1;
        self.counters.malformed += 1;
        self.counters.errors += 1;
        self.failing = hdr.is_some_and(OutHdr::fail_next);
        self.in_group = self.failing;
    }

    fn run(&mut self, hdr: &OutHdr, layout: Layout, write_data: &[u8]) -> Reply {
        let Some(address) = hdr.address().filter(|_| !self.faults.nak) else {
            return Reply::err();
        };
        let result = match layout {
            Layout::ZeroLength => {
                self.counters.zero_length += 1;
                if hdr.read() {
                    self.bus.read(address, 0).map(drop)
                } else {
                    self.bus.write(address, &[])
                }
            }
            Layout::Write(len) => {
                self.counters.writes += 1;
                if write_data.len() != len as usize {
                    return Reply::err();
                }
                self.bus.write(address, write_data)
            }
            Layout::Read(len) => {
                self.counters.reads += 1;
                return match self.bus.read(address, len as usize) {
                    Ok(data) => Reply { status: STATUS_OK, data },
                    Err(_) => Reply::err(),
                };
            }
        };
        match result {
            Ok(()) => Reply { status: STATUS_OK, data: Vec::new() },
            Err(_) => Reply::err(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at24::{At24, At24Kind};
    use proptest::prelude::*;

    fn adapter() -> Adapter {
        let mut bus = I2cBus::new();
        let mut eeprom = At24::new(At24Kind::C02);
        eeprom.seed(0, &(0..=255).collect::<Vec<u8>>());
        bus.attach(0x50, Box::new(eeprom)).unwrap();
        Adapter::new(bus)
    }

    fn hdr(addr7: u16, flags: u32) -> OutHdr {
        OutHdr { addr: addr7 << 1, flags }
    }

    #[test]
    fn header_bytes_are_little_endian_with_padding_ignored() {
        let h = OutHdr::decode(&[0xa0, 0x00, 0xee, 0xee, 0x03, 0, 0, 0]).unwrap();
        assert_eq!(h, OutHdr { addr: 0xa0, flags: FLAG_FAIL_NEXT | FLAG_M_RD });
        assert_eq!(h.address(), Some(0x50));
        assert!(h.read() && h.fail_next());
        assert_eq!(OutHdr::decode(&h.encode()).unwrap(), h);
        assert_eq!(OutHdr::decode(&[0; 7]), Err(ChainError::HeaderBytes(7)));
        assert_eq!(OutHdr::decode(&[0; 9]), Err(ChainError::HeaderBytes(9)));
        // 10-bit or garbage addresses are not 7-bit addresses.
        assert_eq!(OutHdr { addr: 0x100, flags: 0 }.address(), None);
    }

    #[test]
    fn layouts() {
        let (r, w) = (Segment::readable, Segment::writable);
        assert_eq!(Layout::of(&[r(8), w(1)]), Ok(Layout::ZeroLength));
        assert_eq!(Layout::of(&[r(8), r(2), w(1)]), Ok(Layout::Write(2)));
        assert_eq!(Layout::of(&[r(8), w(128), w(1)]), Ok(Layout::Read(128)));
        assert_eq!(Layout::Read(128).used_len(), 129);
        assert_eq!(Layout::Write(2).used_len(), 1);
        assert_eq!(Layout::of(&[]), Err(ChainError::Descriptors(0)));
        assert_eq!(Layout::of(&[r(8)]), Err(ChainError::Descriptors(1)));
        assert_eq!(Layout::of(&[r(8), r(1), r(1), w(1)]), Err(ChainError::Descriptors(4)));
        assert_eq!(Layout::of(&[w(8), w(1)]), Err(ChainError::OutHeader { len: 8, writable: true }));
        assert_eq!(Layout::of(&[r(9), w(1)]), Err(ChainError::OutHeader { len: 9, writable: false }));
        assert_eq!(Layout::of(&[r(8), r(1)]), Err(ChainError::InHeader { len: 1, writable: false }));
        assert_eq!(Layout::of(&[r(8), w(2)]), Err(ChainError::InHeader { len: 2, writable: true }));
        assert_eq!(Layout::of(&[r(8), r(0), w(1)]), Err(ChainError::EmptyBuffer));
        assert_eq!(Layout::of(&[r(8), w(u32::MAX), w(1)]), Err(ChainError::BufferTooLong(u32::MAX)));
    }

    #[test]
    fn at24_read_is_a_write_then_read_group() {
        let mut a = adapter();
        let w = a.execute(&hdr(0x50, FLAG_FAIL_NEXT), Layout::Write(1), &[0x10]);
        assert_eq!(w, Reply { status: STATUS_OK, data: vec![] });
        let r = a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(4), &[]);
        assert_eq!(r, Reply { status: STATUS_OK, data: vec![0x10, 0x11, 0x12, 0x13] });
        assert_eq!(a.counters().errors, 0);
    }

    #[test]
    fn at24_write_lands() {
        let mut a = adapter();
        assert_eq!(a.execute(&hdr(0x50, 0), Layout::Write(2), &[0x05, 0xaa]).status, STATUS_OK);
        a.execute(&hdr(0x50, FLAG_FAIL_NEXT), Layout::Write(1), &[0x05]);
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).data, vec![0xaa]);
    }

    #[test]
    fn zero_length_requests_probe_presence() {
        let mut a = adapter();
        assert_eq!(a.execute(&hdr(0x50, 0), Layout::ZeroLength, &[]).status, STATUS_OK);
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::ZeroLength, &[]).status, STATUS_OK);
        assert_eq!(a.execute(&hdr(0x51, 0), Layout::ZeroLength, &[]).status, STATUS_ERR);
        assert_eq!(a.counters().zero_length, 3);
    }

    #[test]
    fn a_failed_message_fails_the_rest_of_its_group_only() {
        let mut a = adapter();
        // NAK at 0x51, FAIL_NEXT set: the read to the present 0x50 in the same group fails.
        assert_eq!(a.execute(&hdr(0x51, FLAG_FAIL_NEXT), Layout::Write(1), &[0]).status, STATUS_ERR);
        assert_eq!(a.execute(&hdr(0x50, FLAG_FAIL_NEXT | FLAG_M_RD), Layout::Read(1), &[]).status, STATUS_ERR);
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).status, STATUS_ERR);
        // The next group is fresh.
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).status, STATUS_OK);
        // A malformed chain that says more follow fails its group too.
        a.malformed(Some(&hdr(0x50, FLAG_FAIL_NEXT)));
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).status, STATUS_ERR);
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).status, STATUS_OK);
    }

    #[test]
    fn direction_mismatch_and_short_data_are_errors() {
        let mut a = adapter();
        assert_eq!(a.execute(&hdr(0x50, FLAG_M_RD), Layout::Write(1), &[0]).status, STATUS_ERR);
        assert_eq!(a.execute(&hdr(0x50, 0), Layout::Read(1), &[]).status, STATUS_ERR);
        assert_eq!(a.execute(&hdr(0x50, 0), Layout::Write(3), &[0]).status, STATUS_ERR);
        assert_eq!(a.counters().malformed, 2);
    }

    /// What the transport runs for each chain: admit, then execute.
    fn send(a: &mut Adapter, h: OutHdr, layout: Layout, data: &[u8]) -> Option<Reply> {
        match a.admit() {
            Admission::Serve(_) => Some(a.execute(&h, layout, data)),
            Admission::Vanish => None,
        }
    }

    /// An at24 read as Linux sends it: the address write and the data read, one transfer.
    fn at24_read(a: &mut Adapter) -> Option<Reply> {
        send(a, hdr(0x50, FLAG_FAIL_NEXT), Layout::Write(1), &[0x10])?;
        send(a, hdr(0x50, FLAG_M_RD), Layout::Read(2), &[])
    }

    #[test]
    fn transfers_are_counted_by_group() {
        let mut a = adapter();
        assert_eq!(at24_read(&mut a).unwrap().data, [0x10, 0x11]);
        send(&mut a, hdr(0x50, 0), Layout::ZeroLength, &[]);
        assert_eq!((a.counters().transfers, a.counters().messages), (2, 3));
        // A malformed chain that says more follow keeps the group open, one that cannot be
        // read ends it.
        a.admit();
        a.malformed(Some(&hdr(0x50, FLAG_FAIL_NEXT)));
        a.admit();
        a.malformed(None);
        a.admit();
        assert_eq!(a.counters().transfers, 4);
    }

    #[test]
    fn nak_and_error_faults_fail_messages_until_cleared() {
        let mut a = adapter();
        a.set_faults(Faults { nak: true, ..Faults::default() });
        assert_eq!(at24_read(&mut a).unwrap().status, STATUS_ERR);
        assert_eq!(send(&mut a, hdr(0x50, 0), Layout::ZeroLength, &[]).unwrap().status, STATUS_ERR, "a probe finds nothing");
        a.set_faults(Faults { error: true, ..Faults::default() });
        assert_eq!(send(&mut a, hdr(0x50, 0), Layout::Write(2), &[0x00, 0x77]).unwrap().status, STATUS_ERR);
        a.set_faults(Faults::default());
        assert_eq!(at24_read(&mut a).unwrap().status, STATUS_OK);
        // The failed write never reached the EEPROM.
        send(&mut a, hdr(0x50, FLAG_FAIL_NEXT), Layout::Write(1), &[0x00]);
        assert_eq!(send(&mut a, hdr(0x50, FLAG_M_RD), Layout::Read(1), &[]).unwrap().data, [0x00]);
        assert_eq!(a.counters().errors, 4);
    }

    #[test]
    fn reply_delay_is_handed_to_the_transport() {
        let mut a = adapter();
        assert_eq!(a.admit(), Admission::Serve(Duration::ZERO));
        a.set_faults(Faults { reply_delay: Duration::from_millis(7), ..Faults::default() });
        assert_eq!(a.admit(), Admission::Serve(Duration::from_millis(7)));
    }

    /// The adapter vanishes as transfer N starts, mid-way through no message: the first chain
    /// of that transfer and everything after it is left unanswered, even with the fault cleared.
    #[test]
    fn vanish_at_transfer_leaves_that_transfer_unanswered() {
        let mut a = adapter();
        a.set_faults(Faults { vanish_at_transfer: Some(2), ..Faults::default() });
        assert!(at24_read(&mut a).is_some(), "transfer 1 is answered");
        assert_eq!(a.admit(), Admission::Vanish, "transfer 2's first message");
        a.set_faults(Faults::default());
        assert_eq!(a.admit(), Admission::Vanish);
        assert_eq!((a.counters().transfers, a.counters().messages), (2, 2));
    }

    proptest! {
        /// Any descriptor shape and header bytes: no panic; a read reply is exactly the
        /// buffer's length; the used length never exceeds what the chain can take.
        #[test]
        fn arbitrary_chains_never_panic(
            shape in proptest::collection::vec((any::<bool>(), prop_oneof![0u32..300, any::<u32>()]), 0..5),
            header in proptest::collection::vec(any::<u8>(), 0..12),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut a = adapter();
            let segments: Vec<Segment> = shape.iter().map(|&(writable, len)| Segment { writable, len }).collect();
            let capacity: u64 = segments.iter().filter(|s| s.writable).map(|s| u64::from(s.len)).sum();
            match (Layout::of(&segments), OutHdr::decode(&header)) {
                (Ok(layout), Ok(h)) => {
                    prop_assert!(u64::from(layout.used_len()) <= capacity);
                    let reply = a.execute(&h, layout, &data);
                    if let (Layout::Read(len), STATUS_OK) = (layout, reply.status) {
                        prop_assert_eq!(reply.data.len(), len as usize);
                    } else {
                        prop_assert!(reply.data.is_empty());
                    }
                }
                (_, h) => a.malformed(h.ok().as_ref()),
            }
        }
    }
}
