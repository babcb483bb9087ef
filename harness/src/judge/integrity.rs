//! Data integrity as a finding: what a holder's read returned, against what the emulated
//! device held.
//!
//! A read that "succeeds" with stale or freed bytes is no error to user space, so holders
//! record what each read returned ([`ReadData`]: offset, length, digest, the bytes when short)
//! and the host compares it with the at24 model behind the holder's provider. The model
//! changes only by writes the host's emulator serves, and it keeps every past state
//! (`At24::past_values`); the host cannot tell which instant of its own a guest read
//! belongs to, so a read is right if its bytes equal the model's bytes at that place in *any*
//! state the model had, and a mismatch is bytes the device never held there. That never
//! blames a read that raced a write; it lets pass a stale read of a state that once was
//! (said in the README). A holder records each distinct answer at its first occurrence, so
//! every distinct answer is checked once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use agent::{data_digest, ReadData};
use devices::at24::At24;
use serde::Serialize;

use crate::devices::holders::HolderLog;

/// The model behind one holder: the at24 it reads, and how to name it.
pub struct Model {
    /// `at24 0x50 behind bridge`.
    pub device: String,
    pub eeprom: Arc<Mutex<At24>>,
}

/// One read whose bytes the device never held at that place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataMismatch {
    /// The holder's name in the scenario.
    pub holder: String,
    pub kind: String,
    /// The call (`pread`, `nvmem_device_read`, `I2C_SMBUS`) and its record's number.
    pub op: String,
    pub seq: u64,
    pub device: String,
    /// Where the read started in the device, and how many bytes it returned.
    pub offset: u64,
    pub len: u64,
    /// The device offset of the first byte that differs from the model's current contents
    /// (absent when the record carries only a digest, or the lengths cannot be compared).
    pub first_difference: Option<u64>,
    pub read_digest: String,
    /// The digest of the model's current bytes at that place.
    pub model_digest: String,
    pub read_hex: Option<String>,
    pub model_hex: Option<String>,
    /// States of those bytes the read was compared with; early ones forgotten (bounded).
    pub states: usize,
    pub forgotten: u64,
}

impl DataMismatch {
    /// The finding: a synthetic report titled `data mismatch in HOLDER`.
    pub fn report(&self) -> report::Report {
        report::synthetic::data_mismatch(&self.holder, &self.text())
    }

    /// What the report says: which read, where the bytes first differ, both digests (and
    /// both byte strings when short).
    pub fn text(&self) -> String {
        let mut out = format!(
            "holder {} ({}): {} (record {}) of {} bytes at offset {} of {} succeeded with bytes the device never held there\n",
            self.holder, self.kind, self.op, self.seq, self.len, self.offset, self.device
        );
        match self.first_difference {
            Some(at) => {
                let _ = writeln!(out, "first difference at offset {at}");
            }
            None => out.push_str("first difference: unknown (the record carries only a digest, or the read is longer than the device)\n"),
        }
        let _ = writeln!(out, "read:  digest {} bytes {}", self.read_digest, self.read_hex.as_deref().unwrap_or("(not recorded)"));
        let _ = writeln!(out, "model: digest {} bytes {}", self.model_digest, self.model_hex.as_deref().unwrap_or("(long)"));
        let _ = write!(out, "compared with {} state(s) of those bytes since the device was plugged", self.states);
        if self.forgotten > 0 {
            let _ = write!(out, " ({} earlier change(s) forgotten)", self.forgotten);
        }
        out
    }
}

/// How one read compares with the states of the model's bytes at its place.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes equal some state the model had there.
    Held,
    /// They equal none: the first offset (from the read's start) that differs from the last
    /// (current) state, when the read's bytes are known and as long as the state.
    Never { first_difference: Option<usize> },
}

/// Compares one read with `states`, every value the model's bytes at its place had (oldest
/// first, the current one last). Byte-level when the record carries the bytes (which must
/// agree with its digest), by digest otherwise.
pub fn compare(read: &ReadData, states: &[Vec<u8>]) -> Verdict {
    let bytes = read.bytes().filter(|b| data_digest(b) == read.digest);
    let held = states.iter().any(|state| match &bytes {
        Some(bytes) => bytes == state,
        None => read.len == state.len() as u64 && data_digest(state) == read.digest,
    });
    if held {
        return Verdict::Held;
    }
    let first_difference = bytes.zip(states.last()).and_then(|(bytes, current)| {
        (bytes.len() == current.len()).then(|| bytes.iter().zip(current).position(|(a, b)| a != b)).flatten()
    });
    Verdict::Never { first_difference }
}

/// Checks every holder's new reads against its model, each record once.
#[derive(Default)]
pub struct Checker {
    models: BTreeMap<u64, Model>,
    /// Per holder: how many of its records were looked at.
    checked: BTreeMap<u64, usize>,
}

impl Checker {
    /// Holder `handle` reads the at24 of `model` from now on.
    pub fn watch(&mut self, handle: u64, model: Model) {
        self.models.insert(handle, model);
    }

    /// The reads in `logs` not seen before whose bytes their model never held; `name` gives
    /// a holder's scenario name.
    pub fn check(&mut self, logs: &[HolderLog], name: impl Fn(u64) -> String) -> Vec<DataMismatch> {
        let mut found = Vec::new();
        for log in logs {
            let Some(model) = self.models.get(&log.handle) else { continue };
            let seen = self.checked.entry(log.handle).or_default();
            let new = log.records.get(*seen..).unwrap_or_default();
            *seen = log.records.len();
            for record in new.iter().filter(|r| r.errno.is_none()) {
                let Some(read) = &record.data else { continue };
                let eeprom = model.eeprom.lock().unwrap_or_else(|p| p.into_inner());
                let size = eeprom.contents().len();
                let offset = usize::try_from(read.offset).unwrap_or(usize::MAX);
                // The length comes from the guest: never allocate by it past the part's size.
                let (states, forgotten) = match usize::try_from(read.len) {
                    Ok(len) if offset.checked_add(len).is_some_and(|end| end <= size) => eeprom.past_values(offset, len),
                    _ => (Vec::new(), 0),
                };
                drop(eeprom);
                let Verdict::Never { first_difference } = compare(read, &states) else { continue };
                let current = states.last();
                found.push(DataMismatch {
                    holder: name(log.handle),
                    kind: record.kind.name().to_string(),
                    op: record.op.clone(),
                    seq: record.seq,
                    device: model.device.clone(),
                    offset: read.offset,
                    len: read.len,
                    first_difference: first_difference.map(|d| read.offset + d as u64),
                    read_digest: read.digest.clone(),
                    model_digest: current.map_or_else(|| "(none)".to_string(), |c| data_digest(c)),
                    read_hex: read.hex.clone(),
                    model_hex: current.filter(|c| c.len() <= agent::READ_DATA_INLINE).map(hex::encode),
                    states: states.len(),
                    forgotten,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::{ConsumerRecord, HoldKind};
    use devices::at24::At24Kind;
    use devices::i2c::I2cTarget;

    fn read(offset: u64, bytes: &[u8]) -> ReadData {
        ReadData::new(offset, bytes)
    }

    #[test]
    fn a_read_of_any_state_the_model_had_is_held() {
        let states = [vec![1, 2, 3], vec![1, 9, 3]];
        assert_eq!(compare(&read(0, &[1, 2, 3]), &states), Verdict::Held, "an older state");
        assert_eq!(compare(&read(0, &[1, 9, 3]), &states), Verdict::Held, "the current one");
    }

    #[test]
    fn the_first_differing_byte_is_named() {
        let states = [vec![0x3c, 0x3b, 0x32, 0x35]];
        assert_eq!(compare(&read(0, &[0x3c, 0x3b, 0x6b, 0x6b]), &states), Verdict::Never { first_difference: Some(2) });
        assert_eq!(compare(&read(0, &[0, 0x3b, 0x32, 0x35]), &states), Verdict::Never { first_difference: Some(0) });
        // A short read of the right bytes is still not what the device holds at that length.
        assert_eq!(compare(&read(0, &[0x3c, 0x3b]), &states), Verdict::Never { first_difference: None });
    }

    #[test]
    fn long_reads_compare_by_digest() {
        let state: Vec<u8> = (0..=255).collect();
        let same = ReadData { hex: None, ..read(0, &state) };
        assert_eq!(compare(&same, std::slice::from_ref(&state)), Verdict::Held);
        let mut other = state.clone();
        other[200] ^= 1;
        let other = ReadData { hex: None, ..read(0, &other) };
        assert_eq!(compare(&other, &[state]), Verdict::Never { first_difference: None });
    }

    /// Bytes that disagree with their own digest (a broken agent) are not believed: the
    /// digest decides, and a lie in the bytes cannot make a wrong read pass.
    #[test]
    fn bytes_that_contradict_their_digest_are_not_trusted() {
        let lying = ReadData { hex: Some("010203".into()), ..read(0, &[6, 6, 6]) };
        assert_eq!(compare(&lying, &[vec![1, 2, 3]]), Verdict::Never { first_difference: None });
    }

    fn log(handle: u64, reads: &[(u64, &[u8])]) -> HolderLog {
        let records = reads
            .iter()
            .enumerate()
            .map(|(i, (offset, bytes))| ConsumerRecord {
                holder: handle,
                kind: HoldKind::NvmemSysfs,
                seq: i as u64,
                op: "pread".into(),
                ret: Some(bytes.len() as i64),
                errno: None,
                errno_name: None,
                revents: None,
                latency_us: 1,
                mono_ns: 1,
                repeats: 0,
                detail: None,
                data: Some(read(*offset, bytes)),
            })
            .collect();
        let mut log = HolderLog::default();
        (log.handle, log.records) = (handle, records);
        log
    }

    #[test]
    fn the_checker_files_each_wrong_read_once_with_offsets_and_digests() {
        let eeprom = Arc::new(Mutex::new(At24::seeded(At24Kind::C02, &[0x3c, 0x3b, 0x32, 0x35])));
        let mut checker = Checker::default();
        checker.watch(7, Model { device: "at24 0x50 behind bridge".into(), eeprom: eeprom.clone() });
        let name = |h: u64| format!("holder{h}");
        // A write the guest made through the emulator: both states are right.
        eeprom.lock().unwrap().write(&[0x01, 0x99]).unwrap();
        let first = log(7, &[(0, &[0x3c, 0x3b, 0x32, 0x35]), (0, &[0x3c, 0x99, 0x32, 0x35])]);
        assert_eq!(checker.check(std::slice::from_ref(&first), name), []);
        // Freed memory: bytes the part never had, then a read past the part (a lying length).
        let mut later = first;
        later.records.extend(log(7, &[(0, &[0x3c, 0x99, 0x6b, 0x6b]), (250, &[0; 16])]).records);
        let found = checker.check(&[later.clone(), log(8, &[(0, &[1])])], name);
        assert_eq!(found.len(), 2, "{found:#?}");
        let m = &found[0];
        assert_eq!((m.holder.as_str(), m.first_difference, m.states), ("holder7", Some(2), 2));
        assert_eq!(m.model_hex.as_deref(), Some("3c993235"));
        assert_eq!(m.model_digest, data_digest(&[0x3c, 0x99, 0x32, 0x35]));
        let text = m.text();
        assert!(text.contains("first difference at offset 2"), "{text}");
        assert!(text.contains(&format!("read:  digest {} bytes 3c996b6b", data_digest(&[0x3c, 0x99, 0x6b, 0x6b]))), "{text}");
        assert_eq!(m.report().title, "data mismatch in holder7");
        assert_eq!((found[1].offset, found[1].first_difference, found[1].states), (250, None, 0));
        assert_eq!(checker.check(&[later], name), [], "each record is checked once");
    }
}
