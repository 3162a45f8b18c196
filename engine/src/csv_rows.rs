//! CSV rows with their exact place in the file.
//!
//! Built on `csv-core` (the parser inside the `csv` crate) rather than `csv::Reader`, because the
//! reader's record positions start before skipped blank lines and, in CRLF files, before the `\n`
//! of the previous row's terminator (its line numbers are then one short). Here a row's span
//! starts at its first byte and ends after its own terminator (`\n`, `\r\n` or `\r`; none for a
//! last line without one), so copying spans reproduces rows byte for byte, quoting and embedded
//! newlines included. Line numbers count every `\n` before the row, plus one.
//!
//! csv-core is lenient where we are not: a quoted field still open at the end of the file ends
//! the last row there, silently swallowing every row after the quote. That is an error here.
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use csv_core::ReadRecordResult;

use crate::error::{Column, DataError};

/// Longest row accepted; a longer one is almost always an unclosed quote swallowing the file.
pub(crate) const MAX_ROW_BYTES: usize = 64 << 20;
const BUF_BYTES: usize = 1 << 20;

/// Reads a CSV file row by row (the header is the first row).
pub(crate) struct RowScanner {
    path: PathBuf,
    file: File,
    /// What the rows are read from when not `file` as it is: a sealed file's plaintext.
    data: Option<Box<dyn Read + Send>>,
    core: csv_core::Reader,
    /// `buf[..filled]` holds file bytes from offset `base`; `buf[rec_start..pos]` is the row
    /// being read, kept contiguous across refills.
    buf: Vec<u8>,
    base: u64,
    pos: usize,
    filled: usize,
    rec_start: usize,
    /// Line number of the row being read (of `pos` between rows).
    line: u64,
    core_line: u64,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

/// One row: its line, its span in the file, and its unescaped fields.
pub(crate) struct Row<'a> {
    pub line: u64,
    /// File offset of the row's first byte.
    pub start: u64,
    /// The row's bytes as in the file, terminator included.
    pub raw: &'a [u8],
    fields: &'a [u8],
    ends: &'a [usize],
}

impl Row<'_> {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.fields[start..self.ends[i]]
    }

    /// The finite number in field `c`, or the kind of problem with it. The message never holds
    /// the value: it can reach the audit log and the peer.
    /// Whether field `c` is empty or nothing but blanks (a missing value where one may be).
    pub(crate) fn is_blank(&self, c: usize) -> bool {
        c < self.len() && self.field(c).iter().all(u8::is_ascii_whitespace)
    }

    pub(crate) fn number(&self, c: usize) -> Result<f64, &'static str> {
        if c >= self.len() {
            return Err("missing value (row too short)");
        }
        let text = std::str::from_utf8(self.field(c)).map_err(|_| "not valid UTF-8")?.trim();
        match text.parse::<f64>() {
            _ if text.is_empty() => Err("empty value"),
            Ok(v) if v.is_finite() => Ok(v),
            Ok(_) => Err("not a finite number"),
            Err(_) => Err("not a number"),
        }
    }
}

/// `raw` without its line terminator.
pub(crate) fn strip_terminator(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

impl RowScanner {
    pub(crate) fn open(path: &Path) -> Result<Self, DataError> {
        let file = crate::storage::open_regular(path).map_err(|e| DataError::io(path, e))?;
        // Jobs other than a plain PSI read CSV only: a Parquet file is refused by name here
        // rather than parsed as text.
        if crate::parquet_io::is_parquet(path) {
            return Err(crate::parquet_io::psi_only(path));
        }
        Ok(Self::from_file(path, file))
    }

    /// Scans `file` from its current position (errors name `path`).
    pub(crate) fn from_file(path: &Path, file: File) -> Self {
        Self {
            path: path.to_path_buf(),
            file,
            data: None,
            core: csv_core::Reader::new(),
            buf: vec![0; BUF_BYTES],
            base: 0,
            pos: 0,
            filled: 0,
            rec_start: 0,
            line: 1,
            core_line: 1,
            fields: vec![0; 4096],
            ends: vec![0; 64],
        }
    }

    /// Scans a data file this node wrote, sealed or plain ([`crate::storage::open_data`]).
    pub(crate) fn open_data(path: &Path, key: Option<&crate::sealed::StorageKey>) -> Result<Self, DataError> {
        let mut scanner = Self::open(path)?;
        scanner.data = Some(crate::storage::open_data(path, key).map_err(|e| DataError::io(path, e))?);
        Ok(scanner)
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Reads more of the file, first dropping the bytes before `rec_start`. False at end of file.
    fn fill(&mut self) -> Result<bool, DataError> {
        let keep = self.rec_start;
        if keep > 0 {
            self.buf.copy_within(keep..self.filled, 0);
            self.base += keep as u64;
            self.pos -= keep;
            self.filled -= keep;
            self.rec_start = 0;
        }
        if self.filled == self.buf.len() {
            if self.filled >= MAX_ROW_BYTES {
                return Err(DataError::Row {
                    path: self.path.clone(),
                    line: self.line,
                    column: None,
                    message: format!("row longer than {} MiB (an unclosed quote?)", MAX_ROW_BYTES >> 20),
                });
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            let read = match &mut self.data {
                Some(data) => data.read(&mut self.buf[self.filled..]),
                None => self.file.read(&mut self.buf[self.filled..]),
            };
            match read {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DataError::io(&self.path, e)),
            }
        }
    }

    /// The next row, or `None` at the end of the file. Blank lines are skipped.
    pub(crate) fn next_row(&mut self) -> Result<Option<Row<'_>>, DataError> {
        // Skip blank lines and the `\n` of a `\r\n` split across reads.
        loop {
            if self.pos == self.filled {
                self.rec_start = self.pos;
                if !self.fill()? {
                    return Ok(None);
                }
            }
            match self.buf[self.pos] {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'\r' => self.pos += 1,
                _ => break,
            }
        }
        let line = self.line;
        self.rec_start = self.pos;
        let (mut nout, mut nend) = (0, 0);
        let mut at_eof = false;
        loop {
            let (res, nin, o, e) = self.core.read_record(
                &self.buf[self.pos..self.filled],
                &mut self.fields[nout..],
                &mut self.ends[nend..],
            );
            self.pos += nin;
            nout += o;
            nend += e;
            match res {
                ReadRecordResult::InputEmpty => {
                    at_eof = !self.fill()?;
                }
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {
                    grow(res, &mut self.fields, &mut self.ends)
                }
                ReadRecordResult::Record => break,
                ReadRecordResult::End => return Ok(None),
            }
        }
        let core_line = self.core.line();
        self.line += core_line - self.core_line;
        self.core_line = core_line;
        // csv-core ends a `\r\n` row at the `\r`; the `\n` belongs to this row too.
        if self.buf[self.pos - 1] == b'\r' {
            if self.pos == self.filled {
                self.fill()?;
            }
            if self.pos < self.filled && self.buf[self.pos] == b'\n' {
                self.pos += 1;
                self.line += 1;
            }
        }
        let raw = &self.buf[self.rec_start..self.pos];
        if at_eof && let Some((offset, field)) = unclosed_quote(raw, self.base + self.rec_start as u64 == 0) {
            return Err(DataError::Row {
                path: self.path.clone(),
                line: line + count_newlines(&raw[..offset]),
                column: Column::at(field),
                message: "a quoted field starts here and is not closed before the end of the file".into(),
            });
        }
        Ok(Some(Row {
            line,
            start: self.base + self.rec_start as u64,
            raw: &self.buf[self.rec_start..self.pos],
            fields: &self.fields[..nout],
            ends: &self.ends[..nend],
        }))
    }
}

/// Where the quoted field left open at the end of `raw` (one row, as csv-core read it with its
/// default dialect) starts: byte offset of its opening quote and the field's 0-based index.
/// `None` if every quoted field is closed. `first` says `raw` starts the file (a UTF-8 BOM there
/// is not part of the first field).
fn unclosed_quote(raw: &[u8], first: bool) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A quote inside a quoted field: it closes the field unless another quote follows.
        QuoteInQuoted,
    }
    let skip = if first && raw.starts_with(b"\xef\xbb\xbf") { 3 } else { 0 };
    let (mut state, mut field, mut opened) = (State::FieldStart, 0, 0);
    for (i, &b) in raw.iter().enumerate().skip(skip) {
        state = match (state, b) {
            (State::FieldStart, b'"') => {
                opened = i;
                State::Quoted
            }
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) | (State::QuoteInQuoted, b'"') => State::Quoted,
            (_, b',') => {
                field += 1;
                State::FieldStart
            }
            // Only a row's terminator, at its end.
            (_, b'\n' | b'\r') => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    (state == State::Quoted).then_some((opened, field))
}

/// The unescaped fields of one row's bytes (as this module's scanner gives a row).
pub(crate) fn fields_of(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut core = csv_core::Reader::new();
    let (mut input, mut fields, mut ends) = (strip_terminator(raw), vec![0u8; raw.len() + 1], vec![0usize; 64]);
    let (mut nout, mut nend) = (0, 0);
    loop {
        let (res, nin, o, e) = core.read_record(input, &mut fields[nout..], &mut ends[nend..]);
        input = &input[nin..];
        nout += o;
        nend += e;
        match res {
            ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => grow(res, &mut fields, &mut ends),
            ReadRecordResult::InputEmpty if input.is_empty() => {
                // End of the row: tell csv-core the input is over.
                let (_, _, o, e) = core.read_record(&[], &mut fields[nout..], &mut ends[nend..]);
                nout += o;
                nend += e;
                break;
            }
            ReadRecordResult::InputEmpty => {}
            ReadRecordResult::Record | ReadRecordResult::End => break,
        }
    }
    let mut start = 0;
    ends[..nend]
        .iter()
        .map(|&end| {
            let f = fields[start..end.min(nout)].to_vec();
            start = end;
            f
        })
        .collect()
}

/// Parses single rows given as their bytes (as [`RowScanner`] spans them, terminator included),
/// reusing its buffers: how the streaming output re-reads a row it copies out by its span.
pub(crate) struct RowParser {
    core: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

impl RowParser {
    pub(crate) fn new() -> Self {
        Self { core: csv_core::Reader::new(), fields: vec![0; 4096], ends: vec![0; 64] }
    }

    /// `raw` as one row at `line` and file offset `start`; `None` if `raw` is not exactly one
    /// row (more than one record, or none).
    pub(crate) fn parse<'a>(&'a mut self, raw: &'a [u8], line: u64, start: u64) -> Option<Row<'a>> {
        if let Some((nout, nend)) = self.split_plain(raw) {
            return Some(Row { line, start, raw, fields: &self.fields[..nout], ends: &self.ends[..nend] });
        }
        self.parse_with_core(raw, line, start)
    }

    /// `raw`'s fields if it is a plain row: something, then at most its own terminator (`\n`,
    /// `\r\n` or `\r`), and no quote or line break before it. csv-core (the default reader, as
    /// the scan's: `,` delimiter, `"` quote, no escape, no comments) reads such a row as exactly
    /// its comma-separated pieces, so the common row skips the state machine; anything else is
    /// left to [`Self::parse_with_core`]. Returns the lengths of `fields` and `ends` used.
    fn split_plain(&mut self, raw: &[u8]) -> Option<(usize, usize)> {
        let body = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .or_else(|| raw.strip_suffix(b"\r"))
            .unwrap_or(raw);
        if body.is_empty() || body.len() > self.fields.len() || body.iter().any(|&b| matches!(b, b'"' | b'\r' | b'\n'))
        {
            return None;
        }
        let (mut nout, mut nend) = (0, 0);
        for piece in body.split(|&b| b == b',') {
            if nend == self.ends.len() {
                return None;
            }
            self.fields[nout..nout + piece.len()].copy_from_slice(piece);
            nout += piece.len();
            self.ends[nend] = nout;
            nend += 1;
        }
        Some((nout, nend))
    }

    /// [`Self::parse`] by csv-core, for any row.
    fn parse_with_core<'a>(&'a mut self, raw: &'a [u8], line: u64, start: u64) -> Option<Row<'a>> {
        self.core.reset();
        let mut input = raw;
        let (mut nout, mut nend) = (0, 0);
        loop {
            let (res, nin, o, e) = self.core.read_record(input, &mut self.fields[nout..], &mut self.ends[nend..]);
            input = &input[nin..];
            nout += o;
            nend += e;
            match res {
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {
                    grow(res, &mut self.fields, &mut self.ends)
                }
                ReadRecordResult::InputEmpty if input.is_empty() => {
                    // A last row without a terminator: tell csv-core the input is over.
                    let (res, _, o, e) = self.core.read_record(&[], &mut self.fields[nout..], &mut self.ends[nend..]);
                    nout += o;
                    nend += e;
                    if res != ReadRecordResult::Record {
                        return None;
                    }
                    break;
                }
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::Record => break,
                ReadRecordResult::End => return None,
            }
        }
        // Only a row's own terminator may follow the record (a `\r\n` row ends at the `\r`).
        if !(input.is_empty() || input == b"\n") {
            return None;
        }
        Some(Row { line, start, raw, fields: &self.fields[..nout], ends: &self.ends[..nend] })
    }
}

/// Doubles the buffer csv-core ran out of (`OutputFull`: fields, else the field ends).
fn grow(res: ReadRecordResult, fields: &mut Vec<u8>, ends: &mut Vec<usize>) {
    if res == ReadRecordResult::OutputFull {
        fields.resize(fields.len() * 2, 0);
    } else {
        ends.resize(ends.len() * 2, 0);
    }
}

pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Line numbers of the rows starting at `offsets` (one pass over the file up to the last one).
pub(crate) fn lines_at(path: &Path, offsets: &[u64]) -> Result<Vec<u64>, DataError> {
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_by_key(|&i| offsets[i]);
    let mut lines = vec![0; offsets.len()];
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = vec![0u8; BUF_BYTES];
    let (mut base, mut filled, mut newlines) = (0u64, 0usize, 0u64);
    for i in order {
        let target = offsets[i];
        while base + filled as u64 <= target {
            newlines += count_newlines(&buf[..filled]);
            base += filled as u64;
            filled = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
            if filled == 0 {
                break;
            }
        }
        let upto = (target.saturating_sub(base) as usize).min(filled);
        lines[i] = 1 + newlines + count_newlines(&buf[..upto]);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain-row shortcut reads every row as csv-core does: random rows over the characters
    /// that matter (delimiter, quote, CR, LF, blank, letters), compared field by field, with the
    /// same rows refused.
    #[test]
    fn plain_rows_are_parsed_as_by_csv_core() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let alphabet = b"ab,\"\r\n x";
        let fields = |row: &Row<'_>| (0..row.len()).map(|i| row.field(i).to_vec()).collect::<Vec<_>>();
        let (mut plain, mut other) = (RowParser::new(), RowParser::new());
        let mut shortcut = 0;
        for k in 0..200_000 {
            let len = rng.random_range(0..12);
            let mut raw: Vec<u8> = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            if k % 2 == 0 {
                // Mostly plain rows, with each terminator.
                raw.retain(|b| !matches!(b, b'"' | b'\r' | b'\n'));
                raw.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b""][k / 2 % 4]);
            }
            let took = plain.split_plain(&raw).is_some();
            shortcut += usize::from(took);
            let a = plain.parse(&raw, 1, 0).map(|r| fields(&r));
            let b = other.parse_with_core(&raw, 1, 0).map(|r| fields(&r));
            assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&raw));
        }
        assert!(shortcut > 80_000, "the shortcut is taken for plain rows ({shortcut})");
        // Rows longer than the reused buffers go through csv-core, which grows them.
        let long = [vec![b'x'; 10_000], b",y\n".to_vec()].concat();
        assert_eq!(plain.parse(&long, 1, 0).map(|r| r.len()), Some(2));
        let wide = [",".repeat(100).into_bytes(), b"\n".to_vec()].concat();
        assert_eq!(RowParser::new().parse(&wide, 1, 0).map(|r| r.len()), Some(101));
    }

    /// `(line, start, raw, fields)` of each row.
    type Scanned = (u64, u64, Vec<u8>, Vec<Vec<u8>>);

    fn scan(content: &[u8]) -> Vec<Scanned> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, content).unwrap();
        let mut sc = RowScanner::open(&path).unwrap();
        let mut out = Vec::new();
        while let Some(r) = sc.next_row().unwrap() {
            let fields = (0..r.len()).map(|i| r.field(i).to_vec()).collect();
            out.push((r.line, r.start, r.raw.to_vec(), fields));
        }
        let offsets: Vec<u64> = out.iter().map(|r| r.1).collect();
        let lines = lines_at(&path, &offsets).unwrap();
        assert_eq!(lines, out.iter().map(|r| r.0).collect::<Vec<_>>(), "lines_at agrees with the scanner");
        out
    }

    /// The first error the scanner reports for `content`, with the file as `t.csv`.
    fn scan_err(content: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, content).unwrap();
        let mut sc = RowScanner::open(&path).unwrap();
        loop {
            match sc.next_row() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{} scanned without an error", String::from_utf8_lossy(content)),
                Err(e) => return e.to_string().replace(&format!("{}/", dir.path().display()), ""),
            }
        }
    }

    #[test]
    fn unclosed_quote_at_end_of_file_names_where_it_opened() {
        // Once merged three rows into one without an error.
        let err = scan_err(b"id,v\n1,a\n2,\"b\n3,c\n");
        assert_eq!(err, "t.csv:3: column 2: a quoted field starts here and is not closed before the end of the file");
        assert_eq!(&scan_err(b"\"id,v\n1,a\n")[..17], "t.csv:1: column 1");
        // An escaped quote at the very end leaves the field open.
        assert_eq!(&scan_err(b"id,v\n1,\"a\"\"")[..17], "t.csv:2: column 2");
        // The opening quote is on the row's second line, after a closed multi-line field.
        assert_eq!(&scan_err(b"id,v,w\r\n1,\"x\r\ny\",\"open\r\n2,z\r\n")[..17], "t.csv:3: column 3");
    }

    #[test]
    fn quotes_closed_at_end_of_file_are_fine() {
        assert_eq!(scan(b"id,v\n1,\"a\"").len(), 2);
        assert_eq!(scan(b"id,v\r\n1,\"a\r\nb\"").len(), 2);
        assert_eq!(scan(b"id,v\r\n1,\"a\"\"\"").len(), 2);
        assert_eq!(scan(b"id,v\r\n1,\"a\"\r\n").len(), 2);
        assert_eq!(scan(b"\xef\xbb\xbf\"id\",v\n1,2").len(), 2);
        // A quote inside an unquoted field is data, not an opening quote.
        assert_eq!(scan(b"id,v\n1,a\"b").len(), 2);
    }

    #[test]
    fn spans_cover_rows_exactly() {
        let rows = scan(b"id,v\r\n1,\"a\r\nb\"\r\n\r\n\n2,x\n3,\"q\"\"\"");
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[0].0, rows[0].1, &rows[0].2[..]), (1, 0, &b"id,v\r\n"[..]));
        assert_eq!((rows[1].0, &rows[1].2[..]), (2, &b"1,\"a\r\nb\"\r\n"[..]));
        assert_eq!(rows[1].3, vec![b"1".to_vec(), b"a\r\nb".to_vec()]);
        assert_eq!((rows[2].0, &rows[2].2[..]), (6, &b"2,x\n"[..]));
        assert_eq!((rows[3].0, &rows[3].2[..]), (7, &b"3,\"q\"\"\""[..]));
        assert_eq!(rows[3].3[1], b"q\"");
    }

    #[test]
    fn bom_is_kept_in_the_span_and_dropped_from_the_field() {
        let rows = scan(b"\xef\xbb\xbfid\n1\n");
        assert_eq!(rows[0].2, b"\xef\xbb\xbfid\n");
        assert_eq!(rows[0].3, vec![b"id".to_vec()]);
    }

    #[test]
    fn rows_longer_than_the_buffer_stay_contiguous() {
        let long = "x".repeat(3 * BUF_BYTES + 17);
        let content = format!("a,b\r\n1,{long}\r\n2,\"{long}\n\"\r\n");
        let rows = scan(content.as_bytes());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].2, format!("1,{long}\r\n").as_bytes());
        assert_eq!(rows[2].0, 3);
        assert_eq!(rows[2].1, (5 + rows[1].2.len()) as u64);
        assert_eq!(rows[2].3[1].len(), long.len() + 1);
    }

    #[test]
    fn crlf_split_across_reads_belongs_to_its_row() {
        // Put the `\r` of a row's terminator at the last byte of the first read.
        let first = "a\r\n".to_string() + &"y".repeat(BUF_BYTES - 4) + "\r\nz\r\n";
        let rows = scan(first.as_bytes());
        assert_eq!(rows.len(), 3);
        assert!(rows[1].2.ends_with(b"\r\n"));
        assert_eq!(rows[2].2, b"z\r\n");
        assert_eq!(rows[2].0, 3);
    }
}
