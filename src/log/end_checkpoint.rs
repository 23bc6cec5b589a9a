//! The persisted synced-end checkpoint: how far a replica's log was known durable, so that a
//! replica whose recovery cut its log below it knows it lost synced batches, possibly committed
//! ones (bit rot, a lost file), and does not lead with that log (`partition::replica`,
//! `lost_committed`). Power loss and crashes never cut below it (they take only unsynced writes).
//!
//! In: [`EndCheckpoint::write`] (an offset), [`EndCheckpoint::sync`]. Out: after a crash, the last
//! synced value, or an older one, or none; never a value that was not written.
//!
//! # Format
//! One file, `synced-end.checkpoint`, in the partition's directory (the log's recovery ignores
//! names that are not segment files): two 20-byte big-endian slots, written alternately,
//!
//! ```text
//! sequence u64 | offset i64 | crc u32      crc = crc32c_append(crc32c("keel-synced-end"), sequence | offset)
//! ```
//!
//! The slot with the higher sequence whose CRC holds wins. A torn or rotten slot is ignored, so a
//! crash during a write leaves the previous value (never a mix of two), and one flipped bit loses at
//! most the newer value. A lagging checkpoint only makes the loss check less sharp; one above the
//! log after a legitimate truncation makes it resign once for nothing (see `partition::actor`).

use std::future::Future;
use std::io;
use std::pin::Pin;

use crate::storage::{Disk, DiskFile};
use crate::types::Offset;

pub const END_CHECKPOINT_FILE: &str = "synced-end.checkpoint";
pub const END_SLOT_BYTES: usize = 20;

fn slot_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(b"keel-synced-end"), payload)
}

pub fn encode_slot(sequence: u64, offset: Offset) -> [u8; END_SLOT_BYTES] {
    let mut out = [0u8; END_SLOT_BYTES];
    out[0..8].copy_from_slice(&sequence.to_be_bytes());
    out[8..16].copy_from_slice(&offset.0.to_be_bytes());
    let crc = slot_crc(&out[0..16]);
    out[16..20].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes one slot; `None` when it is short or its CRC does not hold.
pub fn decode_slot(raw: &[u8]) -> Option<(u64, Offset)> {
    if raw.len() != END_SLOT_BYTES {
        return None;
    }
    let stored = u32::from_be_bytes(raw[16..20].try_into().expect("4 bytes"));
    if stored != slot_crc(&raw[0..16]) {
        return None;
    }
    let sequence = u64::from_be_bytes(raw[0..8].try_into().expect("8 bytes"));
    let offset = Offset(i64::from_be_bytes(raw[8..16].try_into().expect("8 bytes")));
    Some((sequence, offset))
}

pub struct EndCheckpoint<F: DiskFile> {
    file: F,
    /// The sequence of the last slot written (0: none).
    sequence: u64,
    /// The value last written (durable or not).
    written: Option<Offset>,
    /// Written since the last `sync`.
    dirty: bool,
}

impl<F: DiskFile> EndCheckpoint<F> {
    /// Opens (creating if missing) the checkpoint in `dir`; returns it and the value it holds.
    pub async fn open<D: Disk<File = F>>(disk: &D, dir: &str) -> io::Result<(EndCheckpoint<F>, Option<Offset>)> {
        let dir = dir.trim_end_matches('/');
        disk.create_dir_all(dir)?;
        let file = disk.open(&format!("{dir}/{END_CHECKPOINT_FILE}"), true)?;
        // The file's name is durable before anything is written to it.
        disk.sync_dir(dir).await?;
        let bytes = file.read_at(0, 2 * END_SLOT_BYTES)?;
        let best = bytes.chunks(END_SLOT_BYTES).filter_map(decode_slot).max_by_key(|(sequence, _)| *sequence);
        let (sequence, value) = (best.map_or(0, |(sequence, _)| sequence), best.map(|(_, offset)| offset));
        Ok((EndCheckpoint { file, sequence, written: value, dirty: false }, value))
    }

    /// Writes `offset` to the older slot (not durable until `sync`). A repeat of the last value
    /// writes nothing. A failed write is not retried until the value changes (the checkpoint is
    /// advisory: a stale one makes the loss check less sharp, never wrong).
    pub fn write(&mut self, offset: Offset) -> io::Result<()> {
        if self.written == Some(offset) {
            return Ok(());
        }
        self.sequence += 1;
        let position = (self.sequence % 2) * END_SLOT_BYTES as u64;
        self.written = Some(offset);
        self.file.write_at(position, &encode_slot(self.sequence, offset))?;
        self.dirty = true;
        Ok(())
    }

    /// The value last written or tried (durable or not), else the value `open` found.
    pub fn written(&self) -> Option<Offset> {
        self.written
    }

    /// A future that makes the last write durable (a no-op future when nothing changed).
    pub fn sync(&mut self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'static>> {
        if std::mem::take(&mut self.dirty) {
            Box::pin(self.file.sync())
        } else {
            Box::pin(std::future::ready(Ok(())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimDisk;

    const DIR: &str = "p";

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    #[test]
    fn slots_round_trip_and_every_bit_flip_is_caught() {
        let raw = encode_slot(9, Offset(1234));
        assert_eq!(decode_slot(&raw), Some((9, Offset(1234))));
        assert_eq!(decode_slot(&raw[..END_SLOT_BYTES - 1]), None);
        for byte in 0..END_SLOT_BYTES {
            for bit in 0..8 {
                let mut corrupt = raw;
                corrupt[byte] ^= 1 << bit;
                assert_eq!(decode_slot(&corrupt), None, "flip of bit {bit} in byte {byte}");
            }
        }
    }

    #[test]
    fn the_newest_synced_value_survives_a_crash_and_an_unsynced_one_does_not() {
        let disk = SimDisk::new(1);
        let (mut checkpoint, found) = block_on(EndCheckpoint::open(&disk, DIR)).unwrap();
        assert_eq!(found, None);
        checkpoint.write(Offset(10)).unwrap();
        block_on(checkpoint.sync()).unwrap();
        checkpoint.write(Offset(20)).unwrap();
        block_on(checkpoint.sync()).unwrap();
        checkpoint.write(Offset(30)).unwrap(); // never synced
        disk.crash();
        let (mut checkpoint, found) = block_on(EndCheckpoint::open(&disk, DIR)).unwrap();
        assert_eq!(found, Some(Offset(20)));
        // Writing on after recovery keeps the sequence going up: the next value wins.
        checkpoint.write(Offset(5)).unwrap();
        block_on(checkpoint.sync()).unwrap();
        assert_eq!(block_on(EndCheckpoint::open(&disk, DIR)).unwrap().1, Some(Offset(5)));
    }

    #[test]
    fn a_rotten_newer_slot_falls_back_to_the_older_one() {
        let disk = SimDisk::new(1);
        let (mut checkpoint, _) = block_on(EndCheckpoint::open(&disk, DIR)).unwrap();
        checkpoint.write(Offset(10)).unwrap();
        checkpoint.write(Offset(20)).unwrap();
        block_on(checkpoint.sync()).unwrap();
        // Sequence 2 is in slot 0; flip a bit of it.
        let file = disk.open(&format!("{DIR}/{END_CHECKPOINT_FILE}"), false).unwrap();
        let mut slot = file.read_at(0, END_SLOT_BYTES).unwrap().to_vec();
        slot[9] ^= 0x10;
        file.write_at(0, &slot).unwrap();
        assert_eq!(block_on(EndCheckpoint::open(&disk, DIR)).unwrap().1, Some(Offset(10)));
        // Both slots rotten: no value.
        let mut other = file.read_at(END_SLOT_BYTES as u64, END_SLOT_BYTES).unwrap().to_vec();
        other[0] ^= 1;
        file.write_at(END_SLOT_BYTES as u64, &other).unwrap();
        assert_eq!(block_on(EndCheckpoint::open(&disk, DIR)).unwrap().1, None);
    }
}
