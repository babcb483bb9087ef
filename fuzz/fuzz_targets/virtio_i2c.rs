//! Arbitrary virtio-i2c descriptor chains from the guest (directions, lengths, addresses in
//! and out of guest memory, header bytes, and the faults set between them) through the
//! backend's chain handler, against an at24 on the bus: no panic; the used length never
//! exceeds the chain's writable room; a chain of the wrong shape gets the error status where
//! its last descriptor leaves room for one.
#![no_main]

use devices::at24::{At24, At24Kind};
use devices::i2c::I2cBus;
use devices::virtio_i2c::{Adapter, Faults, Layout, Segment, STATUS_ERR};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: 64 KiB; descriptors point into it, at its end, or past it.
const MEMORY: u64 = 0x1_0000;
/// Where the queue's own rings live (MockSplitQueue puts them at 0), kept clear of buffers.
const BUFFERS: u64 = 0x8000;
const VRING_DESC_F_WRITE: u16 = 2;

fuzz_target!(|data: &[u8]| {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY as usize)]) else { return };
    let mut bus = I2cBus::new();
    let _ = bus.attach(0x50, Box::new(At24::new(At24Kind::C02)));
    let mut adapter = Adapter::new(bus);
    // Records: [descriptor count, fault byte, then per descriptor: where, len lo, len hi, writable]
    // followed by 8 header bytes written at the first descriptor's address.
    let mut rest = data;
    while let [count, fault, tail @ ..] = rest {
        let count = usize::from(count % 5);
        let Some((descs, tail)) = tail.split_at_checked(count * 4) else { return };
        let Some((header, tail)) = tail.split_at_checked(8) else { return };
        rest = tail;
        adapter.set_faults(Faults { nak: fault & 1 != 0, error: fault & 2 != 0, ..Faults::default() });
        let chain: Vec<(u64, u32, bool)> = descs
            .chunks_exact(4)
            .map(|d| {
                // In memory (page-aligned slots), straddling its end, or far past it.
                let addr = match d[0] % 4 {
                    0 | 1 => BUFFERS + u64::from(d[0] / 4) * 0x100,
                    2 => MEMORY - u64::from(d[0] % 16),
                    _ => u64::MAX - u64::from(d[0]),
                };
                (addr, u32::from(u16::from_le_bytes([d[1], d[2]])) << (d[3] >> 4), d[3] & 1 != 0)
            })
            .collect();
        if chain.is_empty() {
            continue;
        }
        let _ = mem.write_slice(header, GuestAddress(chain[0].0));
        let raw: Vec<RawDescriptor> = chain.iter().map(|&(addr, len, w)| RawDescriptor::from(Descriptor::new(addr, len, if w { VRING_DESC_F_WRITE } else { 0 }, 0))).collect();
        let queue = MockSplitQueue::new(&mem, 16);
        let Ok(head) = queue.build_desc_chain(&raw) else { continue };
        let used = harness::devices::vhost_i2c::process_chain(head, &mem, &mut adapter);
        let room: u64 = chain.iter().filter(|d| d.2).map(|d| u64::from(d.1)).sum();
        assert!(u64::from(used) <= room, "used {used} of {room} writable bytes");
        let segments: Vec<Segment> = chain.iter().map(|&(_, len, writable)| Segment { writable, len }).collect();
        let (status_at, status_len, status_writable) = chain[chain.len() - 1];
        if Layout::of(&segments).is_err() && status_writable && status_len >= 1 {
            let mut status = [0u8];
            if mem.read_slice(&mut status, GuestAddress(status_at)).is_ok() {
                assert_eq!(status[0], STATUS_ERR, "a malformed chain got status {}", status[0]);
                assert_eq!(used, 1);
            }
        }
    }
});
