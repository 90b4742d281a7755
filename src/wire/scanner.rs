//! Follows the structure of a server response as its bytes stream past, without decoding rows.
//!
//! The proxy forwards responses in whole socket reads; the scanner only needs the first bytes of
//! each packet to know where the response ends (terminators, `SERVER_MORE_RESULTS_EXISTS`,
//! `LOCAL INFILE` requests) and to pick up what Tandem tracks (status flags, error code,
//! affected rows, prepared statement ids). Cost is O(1) per packet, however long the rows.

use mysql_common::constants::StatusFlags;

use super::packet::MAX_CHUNK;
use super::response::read_lenenc_int;

/// Bytes of each packet the state machine looks at: enough for an OK packet's affected rows,
/// last insert id, status flags and warnings (1 + 9 + 9 + 2 + 2).
const PREFIX: usize = 32;

/// What command the response answers; each has its own shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// COM_QUERY, COM_PROCESS_INFO: OK, ERR, LOCAL INFILE request, or result sets (text rows).
    Query,
    /// COM_STMT_EXECUTE: OK, ERR, or result sets (binary rows); may open a cursor.
    Execute,
    /// COM_STMT_PREPARE: ERR or a prepare-OK with parameter and column definitions.
    Prepare,
    /// COM_FIELD_LIST: column definitions ended by EOF, or ERR.
    FieldList,
    /// COM_STMT_FETCH: rows ended by EOF, or ERR.
    Fetch,
    /// Commands answered by exactly one packet (OK, ERR, EOF or a string).
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Columns(u64),
    ColumnsEof,
    Rows,
    PrepareParams(u16),
    PrepareParamsEof,
    PrepareColumns(u16),
    PrepareColumnsEof,
    FieldList,
    LocalInfile,
    Done,
}

/// What the scanner learned about a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Status flags of the last OK or EOF packet seen.
    pub status: Option<StatusFlags>,
    /// Error code, if the response ended with an ERR packet.
    pub error: Option<u16>,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    /// Warnings counted by the last OK or EOF packet seen.
    pub warnings: u16,
    pub result_sets: u32,
    pub rows: u64,
    /// For COM_STMT_PREPARE: statement id, parameter count, column count.
    pub prepared: Option<(u32, u16, u16)>,
}

/// Where a fed chunk left the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The response continues past this chunk.
    NeedMore,
    /// The response ended after this many bytes of the chunk.
    Done(usize),
    /// The server asked for a local file after this many bytes; the client's file packets
    /// must be relayed before scanning resumes with [`ResponseScanner::resume_after_infile`].
    LocalInfile(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected packet in server response: {0}")]
pub struct ScanError(&'static str);

/// Incremental scanner for one response.
#[derive(Debug)]
pub struct ResponseScanner {
    kind: ResponseKind,
    deprecate_eof: bool,
    state: State,
    header: [u8; 4],
    header_len: usize,
    /// Payload bytes of the current chunk not yet consumed.
    remaining: usize,
    chunk_len: usize,
    /// The current chunk continues a logical packet whose first chunk was 0xFF_FFFF long.
    continuation: bool,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    prefix_want: usize,
    summary: Summary,
}

impl ResponseScanner {
    pub fn new(kind: ResponseKind, deprecate_eof: bool) -> Self {
        ResponseScanner {
            kind,
            deprecate_eof,
            state: match kind {
                ResponseKind::Fetch => State::Rows,
                ResponseKind::FieldList => State::FieldList,
                _ => State::Start,
            },
            header: [0; 4],
            header_len: 0,
            remaining: 0,
            chunk_len: 0,
            continuation: false,
            prefix: [0; PREFIX],
            prefix_len: 0,
            prefix_want: 0,
            summary: Summary::default(),
        }
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn into_summary(self) -> Summary {
        self.summary
    }

    /// After the client's LOCAL INFILE data was relayed, the server answers with OK or ERR.
    pub fn resume_after_infile(&mut self) {
        self.state = State::Start;
    }

    /// Feeds the next bytes of the response.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, ScanError> {
        let mut i = 0;
        while i < data.len() {
            if self.header_len < 4 {
                let n = (4 - self.header_len).min(data.len() - i);
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[i..i + n]);
                self.header_len += n;
                i += n;
                if self.header_len < 4 {
                    break;
                }
                self.chunk_len =
                    u32::from_le_bytes([self.header[0], self.header[1], self.header[2], 0])
                        as usize;
                self.remaining = self.chunk_len;
                self.prefix_len = 0;
                self.prefix_want = if self.continuation {
                    0
                } else {
                    self.chunk_len.min(PREFIX)
                };
                if self.prefix_want == 0 && !self.continuation {
                    self.on_packet()?;
                }
            } else if self.prefix_len < self.prefix_want {
                let n = (self.prefix_want - self.prefix_len).min(data.len() - i);
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[i..i + n]);
                self.prefix_len += n;
                self.remaining -= n;
                i += n;
                if self.prefix_len == self.prefix_want {
                    self.on_packet()?;
                }
            } else {
                let n = self.remaining.min(data.len() - i);
                self.remaining -= n;
                i += n;
            }
            if self.header_len == 4 && self.prefix_len == self.prefix_want && self.remaining == 0 {
                // One physical packet complete.
                self.header_len = 0;
                self.continuation = self.chunk_len == MAX_CHUNK;
                if !self.continuation {
                    match self.state {
                        State::Done => return Ok(Progress::Done(i)),
                        State::LocalInfile => return Ok(Progress::LocalInfile(i)),
                        _ => {}
                    }
                }
            }
        }
        Ok(Progress::NeedMore)
    }

    /// Advances the state machine on the first bytes of a logical packet.
    fn on_packet(&mut self) -> Result<(), ScanError> {
        let p = &self.prefix[..self.prefix_len];
        let first = p.first().copied();
        let is_err = first == Some(0xff);
        // 0xFE starts a terminator only in packets shorter than a full chunk; a row may start
        // with 0xFE when its first cell is longer than 2^24 bytes.
        let is_eof = first == Some(0xfe) && self.chunk_len < MAX_CHUNK;
        if is_err {
            if p.len() >= 3 {
                self.summary.error = Some(u16::from_le_bytes([p[1], p[2]]));
            }
            self.state = State::Done;
            return Ok(());
        }
        self.state = match self.state {
            State::Start => match self.kind {
                ResponseKind::Single => {
                    if first == Some(0x00) || is_eof {
                        self.read_ok(true);
                    }
                    State::Done
                }
                ResponseKind::Prepare => {
                    if first != Some(0x00) || p.len() < 9 {
                        return Err(ScanError("malformed prepare response"));
                    }
                    let id = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                    let cols = u16::from_le_bytes([p[5], p[6]]);
                    let params = u16::from_le_bytes([p[7], p[8]]);
                    self.summary.prepared = Some((id, params, cols));
                    self.after_prepare_params(params, cols)
                }
                ResponseKind::Query | ResponseKind::Execute => match first {
                    Some(0x00) => {
                        self.read_ok(true);
                        self.after_result()
                    }
                    Some(0xfb) if self.kind == ResponseKind::Query => State::LocalInfile,
                    _ => match read_lenenc_int(p) {
                        Some((n, _)) if n > 0 => {
                            self.summary.result_sets += 1;
                            State::Columns(n)
                        }
                        _ => return Err(ScanError("bad column count")),
                    },
                },
                ResponseKind::FieldList | ResponseKind::Fetch => {
                    return Err(ScanError("bad initial state"))
                }
            },
            State::Columns(n) => {
                if n > 1 {
                    State::Columns(n - 1)
                } else if self.deprecate_eof {
                    State::Rows
                } else {
                    State::ColumnsEof
                }
            }
            State::ColumnsEof => {
                if !is_eof {
                    return Err(ScanError("expected EOF after column definitions"));
                }
                self.read_eof();
                let cursor = self
                    .summary
                    .status
                    .is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS));
                if cursor {
                    State::Done
                } else {
                    State::Rows
                }
            }
            State::Rows => {
                if is_eof {
                    if self.deprecate_eof {
                        self.read_ok(false);
                    } else {
                        self.read_eof();
                    }
                    self.after_result()
                } else {
                    self.summary.rows += 1;
                    State::Rows
                }
            }
            State::PrepareParams(n) => {
                if n > 1 {
                    State::PrepareParams(n - 1)
                } else if self.deprecate_eof {
                    self.after_prepare_params(0, self.prepared_cols())
                } else {
                    State::PrepareParamsEof
                }
            }
            State::PrepareParamsEof => {
                if !is_eof {
                    return Err(ScanError("expected EOF after parameter definitions"));
                }
                self.after_prepare_params(0, self.prepared_cols())
            }
            State::PrepareColumns(n) => {
                if n > 1 {
                    State::PrepareColumns(n - 1)
                } else if self.deprecate_eof {
                    State::Done
                } else {
                    State::PrepareColumnsEof
                }
            }
            State::PrepareColumnsEof => {
                if !is_eof {
                    return Err(ScanError("expected EOF after column definitions"));
                }
                State::Done
            }
            State::FieldList => {
                if is_eof {
                    State::Done
                } else {
                    State::FieldList
                }
            }
            State::LocalInfile | State::Done => {
                return Err(ScanError("packet after the end of the response"))
            }
        };
        Ok(())
    }

    fn prepared_cols(&self) -> u16 {
        self.summary.prepared.map_or(0, |(_, _, c)| c)
    }

    fn after_prepare_params(&self, params: u16, cols: u16) -> State {
        if params > 0 {
            State::PrepareParams(params)
        } else if cols > 0 {
            State::PrepareColumns(cols)
        } else {
            State::Done
        }
    }

    fn after_result(&self) -> State {
        let more = self
            .summary
            .status
            .is_some_and(|s| s.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS));
        if more {
            State::Start
        } else {
            State::Done
        }
    }

    /// Reads an OK packet (0x00 or 0xFE header). `counts` also records affected rows and last
    /// insert id (not for the OK that ends a result set, whose counts are zero).
    fn read_ok(&mut self, counts: bool) {
        let p = &self.prefix[..self.prefix_len];
        let Some((affected, a)) = p.get(1..).and_then(read_lenenc_int) else {
            return;
        };
        let Some((insert_id, b)) = p.get(1 + a..).and_then(read_lenenc_int) else {
            return;
        };
        let at = 1 + a + b;
        if let Some(s) = p.get(at..at + 2) {
            self.summary.status = Some(StatusFlags::from_bits_truncate(u16::from_le_bytes([
                s[0], s[1],
            ])));
        }
        if let Some(w) = p.get(at + 2..at + 4) {
            self.summary.warnings = u16::from_le_bytes([w[0], w[1]]);
        }
        if counts {
            self.summary.affected_rows = affected;
            self.summary.last_insert_id = insert_id;
        }
    }

    /// Reads a classic EOF packet: header, warnings, status flags.
    fn read_eof(&mut self) {
        let p = &self.prefix[..self.prefix_len];
        if p.len() >= 5 {
            self.summary.warnings = u16::from_le_bytes([p[1], p[2]]);
            self.summary.status = Some(StatusFlags::from_bits_truncate(u16::from_le_bytes([
                p[3], p[4],
            ])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::response::{eof_packet, ok_packet};

    fn frame(seq: &mut u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = (payload.len() as u32).to_le_bytes();
        out.extend_from_slice(&[len[0], len[1], len[2], *seq]);
        out.extend_from_slice(payload);
        *seq = seq.wrapping_add(1);
        out
    }

    fn text_result(deprecate_eof: bool, rows: usize, more: bool) -> Vec<u8> {
        let mut seq = 1;
        let mut out = frame(&mut seq, &[2]);
        out.extend(frame(&mut seq, b"\x03defcolumn-a"));
        out.extend(frame(&mut seq, b"\x03defcolumn-b"));
        let st = if more {
            StatusFlags::SERVER_MORE_RESULTS_EXISTS | StatusFlags::SERVER_STATUS_AUTOCOMMIT
        } else {
            StatusFlags::SERVER_STATUS_AUTOCOMMIT
        };
        if !deprecate_eof {
            out.extend(frame(
                &mut seq,
                &eof_packet(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
            ));
        }
        for i in 0..rows {
            out.extend(frame(&mut seq, format!("\x011\x02r{}", i % 10).as_bytes()));
        }
        if deprecate_eof {
            let mut ok = ok_packet(0, 0, st, 0);
            ok[0] = 0xfe;
            out.extend(frame(&mut seq, &ok));
        } else {
            out.extend(frame(&mut seq, &eof_packet(st)));
        }
        out
    }

    /// Feeds `bytes` in pieces of `step` and returns where the scanner said it was done.
    fn scan(
        kind: ResponseKind,
        deprecate_eof: bool,
        bytes: &[u8],
        step: usize,
    ) -> (usize, Summary) {
        let mut s = ResponseScanner::new(kind, deprecate_eof);
        let mut off = 0;
        for chunk in bytes.chunks(step) {
            match s.feed(chunk).unwrap() {
                Progress::NeedMore => off += chunk.len(),
                Progress::Done(n) => return (off + n, s.into_summary()),
                Progress::LocalInfile(_) => panic!("unexpected infile"),
            }
        }
        panic!("response did not end");
    }

    #[test]
    fn text_result_ends_at_eof_in_any_chunking() {
        for deprecate in [false, true] {
            let bytes = text_result(deprecate, 25, false);
            for step in [1, 2, 3, 7, 64, bytes.len()] {
                let (end, sum) = scan(ResponseKind::Query, deprecate, &bytes, step);
                assert_eq!(end, bytes.len(), "deprecate={deprecate} step={step}");
                assert_eq!(sum.rows, 25);
                assert_eq!(sum.result_sets, 1);
                assert_eq!(sum.status, Some(StatusFlags::SERVER_STATUS_AUTOCOMMIT));
            }
        }
    }

    #[test]
    fn multi_results_continue_until_last() {
        let mut bytes = text_result(false, 2, true);
        let mut seq = 0;
        bytes.extend(frame(
            &mut seq,
            &ok_packet(5, 7, StatusFlags::SERVER_STATUS_IN_TRANS, 0),
        ));
        bytes.extend(b"trailing garbage");
        let (end, sum) = scan(ResponseKind::Query, false, &bytes, 5);
        assert_eq!(end, bytes.len() - "trailing garbage".len());
        assert_eq!(sum.result_sets, 1);
        assert_eq!(sum.affected_rows, 5);
        assert_eq!(sum.last_insert_id, 7);
        assert_eq!(sum.status, Some(StatusFlags::SERVER_STATUS_IN_TRANS));
    }

    #[test]
    fn error_ends_the_response_with_its_code() {
        let mut seq = 1;
        let bytes = frame(&mut seq, &crate::wire::MysqlError::bad_handshake().encode());
        let (end, sum) = scan(ResponseKind::Query, true, &bytes, 1);
        assert_eq!(end, bytes.len());
        assert_eq!(sum.error, Some(1043));
    }

    #[test]
    fn prepare_response_counts_params_and_columns() {
        for deprecate in [false, true] {
            let mut seq = 1;
            let mut bytes = frame(&mut seq, &[0, 9, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0]);
            bytes.extend(frame(&mut seq, b"\x03defparam1"));
            bytes.extend(frame(&mut seq, b"\x03defparam2"));
            if !deprecate {
                bytes.extend(frame(&mut seq, &eof_packet(StatusFlags::empty())));
            }
            bytes.extend(frame(&mut seq, b"\x03defcol"));
            if !deprecate {
                bytes.extend(frame(&mut seq, &eof_packet(StatusFlags::empty())));
            }
            let (end, sum) = scan(ResponseKind::Prepare, deprecate, &bytes, 3);
            assert_eq!(end, bytes.len());
            assert_eq!(sum.prepared, Some((9, 2, 1)));
        }
    }

    #[test]
    fn local_infile_request_pauses_the_scan() {
        let mut seq = 1;
        let bytes = frame(&mut seq, b"\xfb/tmp/file.csv");
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        assert_eq!(s.feed(&bytes).unwrap(), Progress::LocalInfile(bytes.len()));
        s.resume_after_infile();
        let mut seq = 4;
        let ok = frame(&mut seq, &ok_packet(3, 0, StatusFlags::empty(), 0));
        assert_eq!(s.feed(&ok).unwrap(), Progress::Done(ok.len()));
        assert_eq!(s.summary().affected_rows, 3);
    }

    #[test]
    fn long_row_starting_with_0xfe_is_not_a_terminator() {
        // A row whose first cell is longer than 2^24 bytes starts with 0xFE and fills a
        // whole chunk; it must be treated as a row.
        let mut seq = 1;
        let mut bytes = frame(&mut seq, &[1]);
        bytes.extend(frame(&mut seq, b"\x03defc"));
        bytes.extend(frame(&mut seq, &eof_packet(StatusFlags::empty())));
        let cell_len = MAX_CHUNK + 100;
        let mut row = vec![0xfe];
        row.extend_from_slice(&(cell_len as u64).to_le_bytes());
        row.resize(9 + cell_len, b'x');
        let mut rest = &row[..];
        loop {
            let n = rest.len().min(MAX_CHUNK);
            bytes.extend(frame(&mut seq, &rest[..n]));
            rest = &rest[n..];
            if n < MAX_CHUNK {
                break;
            }
        }
        bytes.extend(frame(
            &mut seq,
            &eof_packet(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
        ));
        let (end, sum) = scan(ResponseKind::Query, false, &bytes, 1 << 16);
        assert_eq!(end, bytes.len());
        assert_eq!(sum.rows, 1);
    }

    #[test]
    fn cursor_open_ends_execute_response_after_columns() {
        let mut seq = 1;
        let mut bytes = frame(&mut seq, &[1]);
        bytes.extend(frame(&mut seq, b"\x03defc"));
        bytes.extend(frame(
            &mut seq,
            &eof_packet(StatusFlags::SERVER_STATUS_CURSOR_EXISTS),
        ));
        let (end, _) = scan(ResponseKind::Execute, false, &bytes, 4);
        assert_eq!(end, bytes.len());
    }

    #[test]
    fn field_list_ends_at_eof() {
        let mut seq = 1;
        let mut bytes = frame(&mut seq, b"\x03defa");
        bytes.extend(frame(&mut seq, b"\x03defb"));
        bytes.extend(frame(&mut seq, &eof_packet(StatusFlags::empty())));
        let (end, _) = scan(ResponseKind::FieldList, false, &bytes, 2);
        assert_eq!(end, bytes.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut s = ResponseScanner::new(ResponseKind::Prepare, false);
        let mut seq = 1;
        assert!(s.feed(&frame(&mut seq, &[0x00, 1])).is_err());
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        let mut seq = 1;
        assert!(s.feed(&frame(&mut seq, &[0x00])).is_ok());
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        assert!(s.feed(&frame(&mut seq, &[0xfc])).is_err());
    }
}
