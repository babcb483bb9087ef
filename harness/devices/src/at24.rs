//! An at24-family I2C EEPROM as Linux's `at24` driver uses it, independent of the adapter.
//!
//! A write message starts with the word address (1 byte, or 2 bytes MSB first for 24c32 and
//! larger) and stores any further bytes at an auto-incrementing pointer; a read message returns
//! bytes from the pointer on. The pointer wraps over the whole array: real chips wrap writes
//! within a page, but at24 never writes across a page (without a `pagesize` property every
//! write is one byte), so the difference is invisible to the guest.
//!
//! Only single-address parts are modelled: 24c04/08/16 answer on 2–8 consecutive addresses
//! (the block number lives in the address), which the tests do not need.

use crate::i2c::{I2cTarget, Nak};

/// The part, as named in the guest's `new_device` (`echo 24c02 0x50 > .../new_device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At24Kind {
    C01,
    C02,
    C32,
    C64,
    C128,
    C256,
    C512,
}

impl At24Kind {
    pub fn size(self) -> usize {
        match self {
            At24Kind::C01 => 128,
            At24Kind::C02 => 256,
            At24Kind::C32 => 4 << 10,
            At24Kind::C64 => 8 << 10,
            At24Kind::C128 => 16 << 10,
            At24Kind::C256 => 32 << 10,
            At24Kind::C512 => 64 << 10,
        }
    }

    /// Word-address bytes: at24's `AT24_FLAG_ADDR16` parts take two.
    pub fn address_bytes(self) -> usize {
        if self.size() > 256 {
            2
        } else {
            1
        }
    }

    /// The Linux device name (`24c02`), for `new_device`.
    pub fn name(self) -> &'static str {
        match self {
            At24Kind::C01 => "24c01",
            At24Kind::C02 => "24c02",
            At24Kind::C32 => "24c32",
            At24Kind::C64 => "24c64",
            At24Kind::C128 => "24c128",
            At24Kind::C256 => "24c256",
            At24Kind::C512 => "24c512",
        }
    }
}

pub struct At24 {
    kind: At24Kind,
    mem: Vec<u8>,
    pointer: usize,
}

impl At24 {
    /// A blank part: erased EEPROM cells read 0xff.
    pub fn new(kind: At24Kind) -> At24 {
        At24 { kind, mem: vec![0xff; kind.size()], pointer: 0 }
    }

    pub fn kind(&self) -> At24Kind {
        self.kind
    }

    pub fn contents(&self) -> &[u8] {
        &self.mem
    }

    /// Writes `data` at `offset`, wrapping at the end like the chip does.
    pub fn seed(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = (offset + i) % self.mem.len();
            self.mem[at] = *b;
        }
    }

    fn advance(&mut self) -> usize {
        let at = self.pointer;
        self.pointer = (self.pointer + 1) % self.mem.len();
        at
    }
}

impl I2cTarget for At24 {
    fn write(&mut self, data: &[u8]) -> Result<(), Nak> {
        let width = self.kind.address_bytes();
        // A message too short to carry a word address (an SMBus quick write or a lone high
        // byte) is acknowledged and leaves the pointer alone.
        let Some((address, payload)) = data.split_at_checked(width) else {
            return Ok(());
        };
        let word = address.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        self.pointer = word % self.mem.len();
        for b in payload {
            let at = self.advance();
            self.mem[at] = *b;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), Nak> {
        for b in buf {
            let at = self.advance();
            *b = self.mem[at];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_addressing_with_wrap() {
        let mut e = At24::new(At24Kind::C02);
        e.write(&[0xfe, 1, 2, 3]).unwrap();
        assert_eq!(&e.contents()[..1], &[3]);
        assert_eq!(&e.contents()[0xfe..], &[1, 2]);
        e.write(&[0xff]).unwrap();
        let mut buf = [0; 3];
        e.read(&mut buf).unwrap();
        assert_eq!(buf, [2, 3, 0xff]);
    }

    #[test]
    fn sixteen_bit_addressing() {
        let mut e = At24::new(At24Kind::C32);
        assert_eq!(At24Kind::C32.address_bytes(), 2);
        e.seed(0x0123, &[0xaa, 0xbb]);
        e.write(&[0x01, 0x23]).unwrap();
        let mut buf = [0; 2];
        e.read(&mut buf).unwrap();
        assert_eq!(buf, [0xaa, 0xbb]);
        // The word address is taken modulo the size (the chip ignores the top bits).
        e.write(&[0xf0, 0x00, 0x42]).unwrap();
        assert_eq!(e.contents()[0x000], 0x42);
    }

    #[test]
    fn short_write_keeps_pointer() {
        let mut e = At24::new(At24Kind::C32);
        e.seed(0, &[1, 2, 3]);
        e.write(&[0x00, 0x02]).unwrap();
        e.write(&[0x00]).unwrap();
        e.write(&[]).unwrap();
        let mut buf = [0; 1];
        e.read(&mut buf).unwrap();
        assert_eq!(buf, [3]);
    }

    #[test]
    fn seed_wraps() {
        let mut e = At24::new(At24Kind::C01);
        e.seed(127, &[9, 8]);
        assert_eq!((e.contents()[127], e.contents()[0]), (9, 8));
    }
}
