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
    /// Every change of `mem`, so a read the guest reports can be checked against any state
    /// the part was in (the host cannot tell exactly when in its own time a guest read ran).
    history: History,
}

/// The contents' past: the state at the start and each change after it, oldest first.
struct History {
    start: Vec<u8>,
    /// (offset, bytes stored there): one write message or seed that changed something.
    changes: Vec<(usize, Vec<u8>)>,
    /// Changes folded into `start` to bound memory: states before those are forgotten.
    forgotten: u64,
}

/// Changes kept before the oldest are folded into the start state (a writer looping on the
/// part must not grow the host's memory without bound).
const HISTORY_CHANGES: usize = 4096;

impl At24 {
    /// A blank part: erased EEPROM cells read 0xff.
    pub fn new(kind: At24Kind) -> At24 {
        At24::seeded(kind, &[])
    }

    /// A part whose contents were `data` (from offset 0, the rest blank) before anyone could
    /// read it: its history starts there.
    pub fn seeded(kind: At24Kind, data: &[u8]) -> At24 {
        let mut mem = vec![0xff; kind.size()];
        let n = data.len().min(mem.len());
        mem[..n].copy_from_slice(&data[..n]);
        At24 { kind, history: History { start: mem.clone(), changes: Vec::new(), forgotten: 0 }, mem, pointer: 0 }
    }

    pub fn kind(&self) -> At24Kind {
        self.kind
    }

    pub fn contents(&self) -> &[u8] {
        &self.mem
    }

    /// Writes `data` at `offset`, wrapping at the end like the chip does.
    pub fn seed(&mut self, offset: usize, data: &[u8]) {
        let offset = offset % self.mem.len();
        self.store(offset, data);
    }

    /// Stores `data` from `offset` on (wrapping), recording the change if it is one.
    fn store(&mut self, offset: usize, data: &[u8]) {
        let len = self.mem.len();
        if data.iter().enumerate().all(|(i, b)| self.mem[(offset + i) % len] == *b) {
            return;
        }
        for (i, b) in data.iter().enumerate() {
            self.mem[(offset + i) % len] = *b;
        }
        let h = &mut self.history;
        h.changes.push((offset, data.to_vec()));
        if h.changes.len() > HISTORY_CHANGES {
            let (at, bytes) = h.changes.remove(0);
            for (i, b) in bytes.iter().enumerate() {
                h.start[(at + i) % len] = *b;
            }
            h.forgotten += 1;
        }
    }

    /// How many times the contents changed since the part was made (seeds and writes that
    /// stored something new).
    pub fn version(&self) -> u64 {
        self.history.forgotten + self.history.changes.len() as u64
    }

    /// Every value `len` bytes from `offset` on (wrapping) had, oldest first, consecutive
    /// repeats dropped, the current one last; and how many early changes were forgotten
    /// (their states are not in the list).
    pub fn past_values(&self, offset: usize, len: usize) -> (Vec<Vec<u8>>, u64) {
        let size = self.mem.len();
        let mut state = self.history.start.clone();
        let window = |state: &[u8]| -> Vec<u8> { (0..len).map(|i| state[(offset + i) % size]).collect() };
        let mut values = vec![window(&state)];
        for (at, bytes) in &self.history.changes {
            for (i, b) in bytes.iter().enumerate() {
                state[(at + i) % size] = *b;
            }
            let value = window(&state);
            if values.last() != Some(&value) {
                values.push(value);
            }
        }
        (values, self.history.forgotten)
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
        let start = word % self.mem.len();
        self.store(start, payload);
        self.pointer = (start + payload.len()) % self.mem.len();
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
    fn past_values_are_every_state_a_window_had() {
        let mut e = At24::seeded(At24Kind::C02, &[1, 2, 3, 4]);
        assert_eq!(e.version(), 0);
        e.write(&[0x01, 9]).unwrap();
        // Writing what is there already is no change.
        e.write(&[0x01, 9]).unwrap();
        e.write(&[0x03, 7]).unwrap();
        e.seed(0xff, &[5, 6]);
        assert_eq!(e.version(), 3);
        let (values, forgotten) = e.past_values(0, 3);
        assert_eq!(values, [vec![1, 2, 3], vec![1, 9, 3], vec![6, 9, 3]]);
        assert_eq!(forgotten, 0);
        assert_eq!(e.past_values(0xff, 2).0, [vec![0xff, 1], vec![5, 6]], "wraps at the end");
        // The current state is always the last value.
        assert_eq!(e.past_values(0, 4).0.last().unwrap(), &e.contents()[..4]);
    }

    #[test]
    fn history_is_bounded_and_says_what_it_forgot() {
        let mut e = At24::seeded(At24Kind::C02, &[0]);
        for i in 0..HISTORY_CHANGES + 10 {
            e.write(&[0, (i % 2 + 1) as u8]).unwrap();
        }
        let (values, forgotten) = e.past_values(0, 1);
        assert_eq!(forgotten, 10);
        assert_eq!(values.len(), HISTORY_CHANGES + 1);
        assert_eq!(e.version(), HISTORY_CHANGES as u64 + 10);
    }

    #[test]
    fn seed_wraps() {
        let mut e = At24::new(At24Kind::C01);
        e.seed(127, &[9, 8]);
        assert_eq!((e.contents()[127], e.contents()[0]), (9, 8));
    }
}
