//! Decoders for CPython's line number tables, as pure functions over byte slices.
//!
//! Two formats exist across the supported versions:
//!
//! * 3.10 `co_linetable`: pairs `(address delta: u8, line delta: i8)`, a line delta of -128
//!   meaning "no line" (see `Objects/lnotab_notes.txt` of 3.10).
//! * 3.11+ `co_linetable`: the PEP 657 location table (see `Objects/locations.md` of 3.11),
//!   entries of one header byte `1cccclll` (code `cccc`, length `lll + 1` code units) followed by
//!   varint-encoded data.
//!
//! Each decoder turns a table into a [`LineTable`], which answers "which line is byte offset
//! `n` on" exactly like `PyCode_Addr2Line` of that version.

/// A decoded line table: half-open byte ranges `[start, end)` with their line (-1: no line),
/// in order, exactly as `_PyLineTable_NextAddressRange` yields them (so as `co_lines()` before
/// 3.12 merged equal neighbours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineTable(pub Vec<(u32, u32, i32)>);

/// Most entries a table may decode to; longer tables are treated as corrupt.
const MAX_ENTRIES: usize = 1 << 20;

impl LineTable {
    /// The line of byte offset `offset` (as `PyCode_Addr2Line`): `None` when the offset has no
    /// line. A negative offset (a frame that has not started) is on the first line, which the
    /// caller passes as `first`.
    pub fn line_for(&self, offset: i64, first: i32) -> Option<u32> {
        if offset < 0 {
            return u32::try_from(first).ok();
        }
        let ranges = &self.0;
        let n = ranges.partition_point(|&(_, end, _)| i64::from(end) <= offset);
        let line = match ranges.get(n) {
            Some(&(start, _, line)) if i64::from(start) <= offset => line,
            _ => -1,
        };
        u32::try_from(line).ok().filter(|&l| l > 0 || line == 0)
    }

    /// Number of decoded entries (for cache accounting).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes a 3.10 `co_linetable`.
pub fn decode_linetable_310(table: &[u8], first: i32) -> LineTable {
    let mut ranges = Vec::with_capacity(table.len() / 2);
    let mut end: u32 = 0;
    let mut computed = first;
    for pair in table.chunks_exact(2).take(MAX_ENTRIES) {
        let start = end;
        end = end.saturating_add(u32::from(pair[0]));
        let ldelta = pair[1] as i8;
        let line = if ldelta == -128 {
            -1
        } else {
            computed = computed.wrapping_add(i32::from(ldelta));
            computed
        };
        // `_PyLineTable_NextAddressRange` skips empty ranges.
        if start != end {
            ranges.push((start, end, line));
        }
    }
    LineTable(ranges)
}

/// Reads an unsigned varint (6 bits per byte, bit 6 = more) at `*pos`.
fn read_varint(table: &[u8], pos: &mut usize) -> Option<u32> {
    let mut val: u32 = 0;
    let mut shift = 0u32;
    loop {
        let b = *table.get(*pos)?;
        *pos += 1;
        if shift > 30 {
            return None;
        }
        val |= u32::from(b & 63) << shift;
        shift += 6;
        if b & 64 == 0 {
            return Some(val);
        }
    }
}

/// Reads a signed varint (zig-zag in the low bit) at `*pos`.
fn read_svarint(table: &[u8], pos: &mut usize) -> Option<i32> {
    let v = read_varint(table, pos)?;
    let mag = (v >> 1) as i32;
    Some(if v & 1 == 1 { -mag } else { mag })
}

/// Decodes a 3.11+ PEP 657 location table (`co_linetable`).
///
/// Returns `None` when the table is malformed (an entry that does not start with a header
/// byte, or data running past the end).
pub fn decode_locations(table: &[u8], first: i32) -> Option<LineTable> {
    let mut ranges = Vec::with_capacity(table.len() / 2);
    let mut end: u32 = 0;
    let mut computed = first;
    let mut pos = 0usize;
    while pos < table.len() {
        let head = table[pos];
        if head & 0x80 == 0 || ranges.len() >= MAX_ENTRIES {
            return None;
        }
        let code = (head >> 3) & 15;
        let units = u32::from(head & 7) + 1;
        let mut data = pos + 1;
        let (delta, no_line) = match code {
            15 => (0, true),
            13 | 14 => (read_svarint(table, &mut data)?, false),
            11 => (1, false),
            12 => (2, false),
            _ => (0, false),
        };
        computed = computed.wrapping_add(delta);
        let start = end;
        end = end.saturating_add(units * 2);
        let line = if no_line { -1 } else { computed };
        ranges.push((start, end, line));
        // The rest of the entry's data is columns; the next entry starts at the next header.
        pos = data;
        while pos < table.len() && table[pos] & 0x80 == 0 {
            pos += 1;
        }
    }
    Some(LineTable(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors dumped from CPython (`co_linetable`, `co_lines()`) for
    // ```python
    // def f(x):            # line 1
    //     a = 1            # 2
    //     for i in range(x):  # 3
    //         a += i       # 4
    //     return (a,       # 5
    //             x)       # 6
    // ```

    /// 3.10.13: `co_linetable` and `co_lines()`.
    #[test]
    fn linetable_310() {
        let table = [4u8, 1, 12, 1, 10, 1, 2, 1, 2, 1, 4, 255];
        let t = decode_linetable_310(&table, 1);
        let lines = vec![
            (0, 4, 2),
            (4, 16, 3),
            (16, 26, 4),
            (26, 28, 5),
            (28, 30, 6),
            (30, 34, 5),
        ];
        assert_eq!(t, LineTable(lines));
        assert_eq!(t.line_for(5, 1), Some(3));
        assert_eq!(t.line_for(34, 1), None);
        assert_eq!(t.line_for(-1, 1), Some(1));
    }

    #[test]
    fn linetable_310_no_line_and_empty_ranges() {
        // An empty range (delta 0) is skipped; -128 means no line.
        let table = [0u8, 5, 2, 0, 2, 0x80, 2, 3];
        let t = decode_linetable_310(&table, 10);
        assert_eq!(t, LineTable(vec![(0, 2, 15), (2, 4, -1), (4, 6, 18)]));
        assert_eq!(t.line_for(3, 10), None);
    }

    /// 3.11.7: PEP 657 table and `co_lines()` (3.11 does not merge equal neighbours).
    #[test]
    fn locations_311() {
        let table = [
            128u8, 0, 216, 8, 9, 128, 65, 221, 13, 18, 144, 49, 137, 88, 140, 88, 240, 0, 1, 5, 15,
            240, 0, 1, 5, 15, 136, 1, 216, 8, 9, 136, 81, 137, 6, 136, 1, 136, 1, 216, 12, 13, 216,
            12, 13, 240, 3, 1, 12, 15, 240, 0, 1, 5, 15,
        ];
        let t = decode_locations(&table, 1).unwrap();
        let lines = vec![
            (0, 2, 1),
            (2, 4, 2),
            (4, 6, 2),
            (6, 18, 3),
            (18, 20, 3),
            (20, 24, 3),
            (24, 34, 3),
            (34, 36, 3),
            (36, 38, 3),
            (38, 40, 3),
            (40, 42, 4),
            (42, 44, 4),
            (44, 48, 4),
            (48, 50, 4),
            (50, 52, 4),
            (52, 54, 5),
            (54, 56, 6),
            (56, 58, 5),
            (58, 60, 5),
        ];
        assert_eq!(t, LineTable(lines));
    }

    /// 3.12.1: a table with no-line entries; `co_lines()` merges equal neighbours, so compare
    /// merged.
    #[test]
    fn locations_312_with_no_line() {
        let table = [
            128u8, 0, 216, 8, 9, 136, 65, 137, 5, 128, 65, 217, 7, 8, 216, 16, 17, 216, 16, 17,
            240, 3, 1, 16, 19, 240, 0, 1, 9, 19, 240, 4, 3, 5, 14, 216, 8, 12, 224, 12, 13, 136, 1,
            240, 8, 0, 12, 16, 248, 240, 9, 0, 13, 14, 137, 1, 250,
        ];
        let LineTable(r) = decode_locations(&table, 1).unwrap();
        let mut merged: Vec<(u32, u32, i32)> = Vec::new();
        for (s, e, l) in r {
            match merged.last_mut() {
                Some(last) if last.2 == l && last.1 == s => last.1 = e,
                _ => merged.push((s, e, l)),
            }
        }
        let lines = vec![
            (0, 2, 1),
            (2, 12, 2),
            (12, 16, 3),
            (16, 18, 4),
            (18, 20, 5),
            (20, 24, 4),
            (24, 26, 6),
            (26, 28, 7),
            (28, 32, 9),
            (32, 34, 13),
            (34, 36, -1),
            (36, 42, 9),
            (42, 48, -1),
        ];
        assert_eq!(merged, lines);
    }

    #[test]
    fn locations_forms() {
        // no-location entry (code 15, 1 unit), then a long form (code 14, 2 units) with line
        // delta +3 (svarint 6), end line delta 0, columns; then a one-line form (code 12: +2).
        let table = [0xf8u8, 0xf1, 6, 0, 1, 2, 0xe0, 3, 4];
        let t = decode_locations(&table, 10).unwrap();
        assert_eq!(t, LineTable(vec![(0, 2, -1), (2, 6, 13), (6, 8, 15)]));
        // Negative svarint: delta -3 (svarint 7) with no columns (code 13).
        let t = decode_locations(&[0xe8, 7], 10).unwrap();
        assert_eq!(t, LineTable(vec![(0, 2, 7)]));
        // A long varint: delta +100 = svarint 200 = 0b11_001000 -> [64 | 8, 3].
        let t = decode_locations(&[0xe8, 64 | 8, 3], 1).unwrap();
        assert_eq!(t, LineTable(vec![(0, 2, 101)]));
    }

    #[test]
    fn malformed_locations_are_rejected() {
        assert_eq!(decode_locations(&[0x00], 1), None);
        assert_eq!(decode_locations(&[0xf0, 64], 1), None);
        assert_eq!(decode_locations(&[], 1), Some(LineTable(vec![])));
    }
}
