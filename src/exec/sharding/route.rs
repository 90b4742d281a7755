//! Route: one shard's answer to a statement sent to it, read packet by packet.
//!
//! The leaf of every scatter: the merge operators above it pull rows from one route per
//! shard. A route holds one row at a time; the shard's socket buffer and TCP's window hold
//! the rest, so a shard that produces faster than the merge consumes simply waits.

use bytes::Bytes;
use mysql_common::constants::StatusFlags;

use crate::backend::{BackendConn, BackendError};
use crate::wire::response::read_lenenc_int;
use crate::wire::WireError;

/// Largest row a shard may send (as the database's own `max_allowed_packet` bounds it).
const MAX_ROW: usize = 1 << 30;

/// What a shard answered before its rows.
#[derive(Debug)]
pub enum Header {
    /// A result set with these column definitions (raw packets).
    Rows(Vec<Bytes>),
    /// An OK packet: the statement returned no result set.
    Ok(Bytes),
    /// An ERR packet.
    Err(Bytes),
}

/// A text-protocol row and where each of its cells lies in it.
#[derive(Debug, Clone)]
pub struct Row {
    pub payload: Bytes,
    /// Each cell's byte range in `payload`; `None` for NULL.
    pub cells: Vec<Option<(usize, usize)>>,
}

impl Row {
    pub fn parse(payload: Bytes) -> Result<Row, BackendError> {
        let mut cells = Vec::new();
        let mut at = 0;
        while at < payload.len() {
            if payload[at] == 0xfb {
                cells.push(None);
                at += 1;
                continue;
            }
            let (len, n) = read_lenenc_int(&payload[at..])
                .ok_or_else(|| BackendError::Protocol("a row cell Tandem cannot read".into()))?;
            let start = at + n;
            let end = start
                .checked_add(len as usize)
                .filter(|&e| e <= payload.len())
                .ok_or_else(|| BackendError::Protocol("a row cell past its packet".into()))?;
            cells.push(Some((start, end)));
            at = end;
        }
        Ok(Row { payload, cells })
    }

    pub fn cell(&self, i: usize) -> Option<&[u8]> {
        self.cells
            .get(i)
            .copied()
            .flatten()
            .map(|(s, e)| &self.payload[s..e])
    }

    /// The row's first `n` cells, as a row payload: the cells Tandem added come last, so
    /// cutting them off is cutting the payload short.
    pub fn visible(&self, n: usize) -> &[u8] {
        if n >= self.cells.len() {
            return &self.payload;
        }
        // Where cell n starts: after cell n-1's end, or at 0.
        let end = match n.checked_sub(1) {
            None => 0,
            Some(last) => self.end_of(last),
        };
        &self.payload[..end]
    }

    fn end_of(&self, i: usize) -> usize {
        match self.cells[i] {
            Some((_, e)) => e,
            // A NULL is one byte, right after the cell before it.
            None => match i.checked_sub(1) {
                None => 1,
                Some(p) => self.end_of(p) + 1,
            },
        }
    }
}

/// A row could not be read: the shard sent an error in its place, or failed.
#[derive(Debug)]
pub enum RowError {
    /// An ERR packet in place of a row (the statement failed part-way on that shard).
    Server(Bytes),
    Backend(BackendError),
}

impl From<BackendError> for RowError {
    fn from(e: BackendError) -> Self {
        RowError::Backend(e)
    }
}

impl From<WireError> for RowError {
    fn from(e: WireError) -> Self {
        RowError::Backend(e.into())
    }
}

/// One shard's answer, as it streams in.
pub struct Route<'c> {
    pub shard: usize,
    conn: &'c mut BackendConn,
    /// The header is read; rows follow.
    in_rows: bool,
    /// The answer has been read to its end.
    done: bool,
    /// Status flags of the answer's last packet.
    pub status: StatusFlags,
    pub warnings: u16,
}

impl<'c> Route<'c> {
    /// A route for a statement already sent on `conn`.
    pub fn new(shard: usize, conn: &'c mut BackendConn) -> Route<'c> {
        let status = conn.status;
        Route {
            shard,
            conn,
            in_rows: false,
            done: false,
            status,
            warnings: 0,
        }
    }

    async fn packet(&mut self) -> Result<Bytes, BackendError> {
        let p = self
            .conn
            .io()
            .read_packet(MAX_ROW)
            .await?
            .ok_or(WireError::Truncated)?;
        Ok(p.payload)
    }

    /// Reads what comes before the rows.
    pub async fn header(&mut self) -> Result<Header, BackendError> {
        let first = self.packet().await?;
        match first.first() {
            Some(0x00) => {
                self.done = true;
                self.ok_status(&first);
                Ok(Header::Ok(first))
            }
            Some(0xff) => {
                self.done = true;
                Ok(Header::Err(first))
            }
            Some(0xfb) | None => {
                self.done = true;
                Err(BackendError::Protocol(
                    "an answer a sharded read cannot take (LOCAL INFILE)".into(),
                ))
            }
            Some(_) => {
                let (count, _) = read_lenenc_int(&first)
                    .ok_or_else(|| BackendError::Protocol("a bad column count".into()))?;
                let mut columns = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    columns.push(self.packet().await?);
                }
                if !self.conn.deprecate_eof() {
                    self.packet().await?;
                }
                self.in_rows = true;
                Ok(Header::Rows(columns))
            }
        }
    }

    /// The next row; `None` at the end of the rows.
    pub async fn next(&mut self) -> Result<Option<Row>, RowError> {
        if self.done || !self.in_rows {
            return Ok(None);
        }
        let p = self.packet().await?;
        match p.first() {
            Some(0xfe) if p.len() < 0xff_ffff => {
                self.done = true;
                if self.conn.deprecate_eof() {
                    self.ok_status(&p);
                } else if p.len() >= 5 {
                    self.warnings = u16::from_le_bytes([p[1], p[2]]);
                    self.status = StatusFlags::from_bits_truncate(u16::from_le_bytes([p[3], p[4]]));
                }
                if self
                    .status
                    .contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS)
                {
                    return Err(RowError::Backend(BackendError::Protocol(
                        "more than one result set".into(),
                    )));
                }
                self.conn.status = self.status;
                Ok(None)
            }
            Some(0xff) => {
                self.done = true;
                Err(RowError::Server(p))
            }
            _ => Ok(Some(Row::parse(p)?)),
        }
    }

    fn ok_status(&mut self, ok: &[u8]) {
        let mut at = 1;
        for _ in 0..2 {
            match ok.get(at..).and_then(read_lenenc_int) {
                Some((_, n)) => at += n,
                None => return,
            }
        }
        if let Some(b) = ok.get(at..at + 4) {
            self.status = StatusFlags::from_bits_truncate(u16::from_le_bytes([b[0], b[1]]));
            self.warnings = u16::from_le_bytes([b[2], b[3]]);
            self.conn.status = self.status;
        }
    }

    /// Reads the rest of the answer, so the connection is ready for the next statement.
    pub async fn drain(&mut self) -> Result<(), BackendError> {
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(RowError::Server(_)) => return Ok(()),
                Err(RowError::Backend(e)) => return Err(e),
            }
        }
    }

    pub fn conn(&mut self) -> &mut BackendConn {
        self.conn
    }
}

/// What Tandem reads of a column definition to compare its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Collation id (63: binary).
    pub charset: u16,
    pub column_type: u8,
    pub flags: u16,
    pub decimals: u8,
}

impl ColumnInfo {
    pub fn parse(def: &[u8]) -> Option<ColumnInfo> {
        let mut at = 0;
        for _ in 0..6 {
            let (len, n) = read_lenenc_int(def.get(at..)?)?;
            at += n + len as usize;
        }
        let (_, n) = read_lenenc_int(def.get(at..)?)?;
        at += n;
        let fixed = def.get(at..at + 10)?;
        Some(ColumnInfo {
            charset: u16::from_le_bytes([fixed[0], fixed[1]]),
            column_type: fixed[6],
            flags: u16::from_le_bytes([fixed[7], fixed[8]]),
            decimals: fixed[9],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::response::{column_definition, put_lenenc_bytes};
    use mysql_common::constants::ColumnType;

    #[test]
    fn rows_are_cut_at_their_hidden_cells() {
        let mut p = Vec::new();
        put_lenenc_bytes(&mut p, b"a");
        p.push(0xfb);
        put_lenenc_bytes(&mut p, b"hidden");
        let row = Row::parse(Bytes::from(p.clone())).unwrap();
        assert_eq!(row.cell(0), Some(&b"a"[..]));
        assert_eq!(row.cell(1), None);
        assert_eq!(row.cell(2), Some(&b"hidden"[..]));
        assert_eq!(row.visible(2), &p[..3]);
        assert_eq!(row.visible(1), &p[..2]);
        assert_eq!(row.visible(0), &p[..0]);
        assert_eq!(row.visible(3), &p[..]);
        assert!(Row::parse(Bytes::from_static(&[5, b'a'])).is_err());
    }

    #[test]
    fn column_definitions_give_type_and_collation() {
        let def = column_definition("n", ColumnType::MYSQL_TYPE_VAR_STRING, 10, 45);
        let info = ColumnInfo::parse(&def).unwrap();
        assert_eq!(info.charset, 45);
        assert_eq!(info.column_type, ColumnType::MYSQL_TYPE_VAR_STRING as u8);
    }
}
