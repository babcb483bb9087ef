//! An I2C bus where targets attach by 7-bit address.
//!
//! Adapters (the CP2112 now, a vhost-user-i2c backend later) translate their own wire format
//! into the three bus operations here; targets never see the adapter. An empty address NAKs,
//! as on a real bus, which is what the guest's probes (`at24` test read, HWMON `->detect`)
//! expect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The target did not acknowledge (no device, or a device that refuses the transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nak;

/// A device on the bus. `write` gets one write message (start, address, data, stop or repeated
/// start); `read` fills `buf` with one read message.
pub trait I2cTarget: Send {
    fn write(&mut self, data: &[u8]) -> Result<(), Nak>;
    fn read(&mut self, buf: &mut [u8]) -> Result<(), Nak>;
}

/// A target shared with the host side (tests seed and inspect it while the guest runs).
impl<T: I2cTarget> I2cTarget for Arc<Mutex<T>> {
    fn write(&mut self, data: &[u8]) -> Result<(), Nak> {
        self.lock().unwrap_or_else(|e| e.into_inner()).write(data)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), Nak> {
        self.lock().unwrap_or_else(|e| e.into_inner()).read(buf)
    }
}

/// Why a target could not be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("I2C address {0:#04x} is not a 7-bit address")]
    BadAddress(u8),
    #[error("I2C address {0:#04x} is already in use")]
    Busy(u8),
}

/// The highest 7-bit address.
const MAX_ADDRESS: u8 = 0x7f;

#[derive(Default)]
pub struct I2cBus {
    targets: BTreeMap<u8, Box<dyn I2cTarget>>,
}

impl I2cBus {
    pub fn new() -> I2cBus {
        I2cBus::default()
    }

    pub fn attach(&mut self, address: u8, target: Box<dyn I2cTarget>) -> Result<(), AttachError> {
        if address > MAX_ADDRESS {
            return Err(AttachError::BadAddress(address));
        }
        if self.targets.contains_key(&address) {
            return Err(AttachError::Busy(address));
        }
        self.targets.insert(address, target);
        Ok(())
    }

    /// Removes the target at `address` (a device pulled off the bus while the adapter stays).
    pub fn detach(&mut self, address: u8) -> Option<Box<dyn I2cTarget>> {
        self.targets.remove(&address)
    }

    pub fn write(&mut self, address: u8, data: &[u8]) -> Result<(), Nak> {
        self.target(address)?.write(data)
    }

    pub fn read(&mut self, address: u8, len: usize) -> Result<Vec<u8>, Nak> {
        let mut buf = vec![0; len];
        self.target(address)?.read(&mut buf)?;
        Ok(buf)
    }

    /// A write message, a repeated start and a read message to the same target, as one
    /// transaction: nobody else can touch the target in between.
    pub fn write_read(&mut self, address: u8, data: &[u8], len: usize) -> Result<Vec<u8>, Nak> {
        let target = self.target(address)?;
        target.write(data)?;
        let mut buf = vec![0; len];
        target.read(&mut buf)?;
        Ok(buf)
    }

    fn target(&mut self, address: u8) -> Result<&mut Box<dyn I2cTarget>, Nak> {
        self.targets.get_mut(&address).ok_or(Nak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records writes and answers reads with an incrementing counter.
    #[derive(Default)]
    struct Probe {
        writes: Vec<Vec<u8>>,
        next: u8,
    }

    impl I2cTarget for Probe {
        fn write(&mut self, data: &[u8]) -> Result<(), Nak> {
            self.writes.push(data.to_vec());
            Ok(())
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<(), Nak> {
            for b in buf {
                *b = self.next;
                self.next = self.next.wrapping_add(1);
            }
            Ok(())
        }
    }

    #[test]
    fn empty_address_naks() {
        let mut bus = I2cBus::new();
        assert_eq!(bus.write(0x50, &[0]), Err(Nak));
        assert_eq!(bus.read(0x50, 1), Err(Nak));
        assert_eq!(bus.write_read(0x50, &[0], 1), Err(Nak));
    }

    #[test]
    fn attach_checks_address() {
        let mut bus = I2cBus::new();
        assert_eq!(bus.attach(0x80, Box::new(Probe::default())), Err(AttachError::BadAddress(0x80)));
        bus.attach(0x50, Box::new(Probe::default())).unwrap();
        assert_eq!(bus.attach(0x50, Box::new(Probe::default())), Err(AttachError::Busy(0x50)));
        assert!(bus.detach(0x50).is_some());
        assert_eq!(bus.read(0x50, 1), Err(Nak));
    }

    #[test]
    fn shared_target_sees_write_read() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = I2cBus::new();
        bus.attach(0x20, Box::new(probe.clone())).unwrap();
        assert_eq!(bus.write_read(0x20, &[7, 8], 3), Ok(vec![0, 1, 2]));
        assert_eq!(bus.read(0x20, 1), Ok(vec![3]));
        assert_eq!(probe.lock().unwrap().writes, vec![vec![7, 8]]);
    }
}
