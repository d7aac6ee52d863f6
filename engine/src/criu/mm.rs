//! `mm-<pid>.img`: a task's memory layout as CRIU dumped it. pagestream reads only the VMA
//! bounds: a lazy restore must not install one batch across two VMAs (userfaultfd fills one VMA
//! at a time; CRIU's pagemap entries can run across a boundary).

use std::fs;
use std::path::Path;

use super::error::{ImageError, ImageErrorKind};
use super::record::RecordReader;

/// `MM_MAGIC` ("Pskov").
pub const MM_MAGIC: u32 = 0x5749_2820;

/// `VmaEntry`, the bounds only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmaEntryPb {
    #[prost(uint64, optional, tag = "1")]
    pub start: Option<u64>,
    #[prost(uint64, optional, tag = "2")]
    pub end: Option<u64>,
}

/// `MmEntry`, the VMAs only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MmEntryPb {
    #[prost(message, repeated, tag = "14")]
    pub vmas: Vec<VmaEntryPb>,
}

/// The file name of task `pid`'s memory layout.
pub fn mm_file_name(pid: u64) -> String {
    format!("mm-{pid}.img")
}

/// The VMAs `[start, end)` of `dir/mm-<pid>.img`, sorted; `Ok(None)` when there is no such file.
pub fn read_vmas(dir: &Path, pid: u64) -> Result<Option<Vec<(u64, u64)>>, ImageError> {
    let path = dir.join(mm_file_name(pid));
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(&path, e)),
    };
    let mut r = RecordReader::new(&path, &data);
    r.expect_magics(MM_MAGIC)?;
    let Some((offset, mm)) = r.next_message::<MmEntryPb>()? else {
        return Err(ImageError::file(&path, ImageErrorKind::Invalid("no MmEntry record".into())));
    };
    let mut vmas = Vec::with_capacity(mm.vmas.len());
    for v in &mm.vmas {
        match (v.start, v.end) {
            (Some(s), Some(e)) if s < e => vmas.push((s, e)),
            _ => {
                let msg = format!("VMA without valid bounds in the record at offset {offset}: {v:?}");
                return Err(ImageError::file(&path, ImageErrorKind::Invalid(msg)));
            }
        }
    }
    vmas.sort_unstable();
    Ok(Some(vmas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu::record::{write_magics, write_message};

    #[test]
    fn reads_vma_bounds_and_refuses_bad_ones() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_vmas(tmp.path(), 7).unwrap(), None);
        let mut out = Vec::new();
        write_magics(&mut out, MM_MAGIC);
        let vma = |s, e| VmaEntryPb { start: Some(s), end: Some(e) };
        write_message(&mut out, &MmEntryPb { vmas: vec![vma(0x3000, 0x5000), vma(0x1000, 0x2000)] });
        fs::write(tmp.path().join("mm-7.img"), &out).unwrap();
        assert_eq!(read_vmas(tmp.path(), 7).unwrap(), Some(vec![(0x1000, 0x2000), (0x3000, 0x5000)]));

        let mut bad = Vec::new();
        write_magics(&mut bad, MM_MAGIC);
        write_message(&mut bad, &MmEntryPb { vmas: vec![vma(0x5000, 0x5000)] });
        fs::write(tmp.path().join("mm-8.img"), &bad).unwrap();
        assert!(read_vmas(tmp.path(), 8).unwrap_err().to_string().contains("without valid bounds"));
        fs::write(tmp.path().join("mm-9.img"), b"garbage!").unwrap();
        assert!(read_vmas(tmp.path(), 9).is_err());
    }
}
