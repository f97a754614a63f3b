//! Rows in `COPY ... FROM STDIN` text format, for the projector's batched writes.
//!
//! `COPY` is the cheapest way into Postgres: no statement per row, no JSON built only
//! to be taken apart again, and heap pages filled many rows at a time. Each value is
//! written in its type's text input form; the format's own escapes (backslash, tab,
//! newline, carriage return) are applied to every field, so any text is safe.

use std::io::Write;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// A `COPY` text-format buffer: fields in column order, rows ended by [`CopyRows::end_row`].
#[derive(Debug, Default)]
pub struct CopyRows {
    buffer: Vec<u8>,
    rows: usize,
    at_row_start: bool,
}

/// Appends `bytes` to `out` with `COPY` text escapes.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (index, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        out.extend_from_slice(escaped);
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Writes into a [`CopyRows`] field with escapes (for serializers that write bytes).
struct Escaping<'a>(&'a mut Vec<u8>);

impl Write for Escaping<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        escape_into(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends an array element, double-quoted, to an array literal.
fn quoted_element(literal: &mut String, element: &str) {
    literal.push('"');
    for character in element.chars() {
        if character == '"' || character == '\\' {
            literal.push('\\');
        }
        literal.push(character);
    }
    literal.push('"');
}

/// A Postgres array literal (`{"a","b"}`) of `elements`, for a `TEXT[]` or `UUID[]`
/// value; every element is quoted, so any text is safe.
pub fn array_literal<'a>(elements: impl IntoIterator<Item = &'a str>) -> String {
    let mut literal = String::from("{");
    for (index, element) in elements.into_iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        quoted_element(&mut literal, element);
    }
    literal.push('}');
    literal
}

/// The literal of a `UUID[]` value.
pub fn uuid_array_literal(ids: &[Uuid]) -> String {
    let mut literal = String::with_capacity(2 + ids.len() * 37);
    literal.push('{');
    for (index, id) in ids.iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        literal.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
    literal.push('}');
    literal
}

impl CopyRows {
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            rows: 0,
            at_row_start: true,
        }
    }

    /// Rows written so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The text as `COPY` reads it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer
    }

    fn separate(&mut self) {
        if !self.at_row_start {
            self.buffer.push(b'\t');
        }
        self.at_row_start = false;
    }

    pub fn end_row(&mut self) {
        self.buffer.push(b'\n');
        self.rows += 1;
        self.at_row_start = true;
    }

    pub fn null(&mut self) -> &mut Self {
        self.separate();
        self.buffer.extend_from_slice(b"\\N");
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.separate();
        escape_into(&mut self.buffer, value.as_bytes());
        self
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn uuid(&mut self, value: &Uuid) -> &mut Self {
        self.separate();
        self.buffer.extend_from_slice(
            value
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.separate();
        // Writing to a Vec cannot fail.
        let _ = write!(self.buffer, "{value}");
        self
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.int(value),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.separate();
        self.buffer.push(if value { b't' } else { b'f' });
        self
    }

    /// A `TIMESTAMPTZ`, as [`to_microseconds`] makes it.
    pub fn timestamp(&mut self, value: DateTime<Utc>) -> &mut Self {
        self.separate();
        let value = to_microseconds(value);
        let date = value.date_naive();
        let time = value.time();
        let _ = write!(
            self.buffer,
            "{} {:02}:{:02}:{:02}.{:06}+00",
            Date(date),
            time.hour(),
            time.minute(),
            time.second(),
            time.nanosecond() / 1000,
        );
        self
    }

    pub fn opt_timestamp(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(value) => self.timestamp(value),
            None => self.null(),
        }
    }

    pub fn date(&mut self, value: NaiveDate) -> &mut Self {
        self.separate();
        let _ = write!(self.buffer, "{}", Date(value));
        self
    }

    pub fn opt_date(&mut self, value: Option<NaiveDate>) -> &mut Self {
        match value {
            Some(value) => self.date(value),
            None => self.null(),
        }
    }

    /// JSON text, as it is (a `JSONB` column parses it).
    pub fn json_text(&mut self, json: &str) -> &mut Self {
        self.text(json)
    }

    /// A value serialized as JSON straight into the buffer.
    pub fn json<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> &mut Self {
        self.separate();
        // Plain data (strings, numbers, maps with string keys) always serializes.
        let _ = serde_json::to_writer(Escaping(&mut self.buffer), value);
        self
    }

    /// An array value from its literal ([`array_literal`], [`uuid_array_literal`]).
    pub fn array(&mut self, literal: &str) -> &mut Self {
        self.text(literal)
    }

    /// Sends the rows to `COPY table (columns) FROM STDIN` on `connection` (inside the
    /// caller's transaction). Nothing is sent when there are no rows.
    pub async fn send(
        &self,
        connection: &mut PgConnection,
        table: &str,
        columns: &[&str],
    ) -> Result<u64, sqlx::Error> {
        if self.rows == 0 {
            return Ok(0);
        }
        let statement = format!("COPY {table} ({}) FROM STDIN", columns.join(", "));
        let mut copy = connection.copy_in_raw(&statement).await?;
        if let Err(error) = copy.send(self.buffer.as_slice()).await {
            let _ = copy.abort("the projector could not send its rows").await;
            return Err(error);
        }
        copy.finish().await
    }
}

/// `at` to the microsecond, as Postgres rounds timestamp text (half to even): what a
/// `TIMESTAMPTZ` column holds of it. Every write of a timestamp goes through this,
/// whether as `COPY` text or as a bound value (which Postgres would truncate), so a row
/// written whole and a row updated later hold the same instant.
pub fn to_microseconds(at: DateTime<Utc>) -> DateTime<Utc> {
    // A leap second's fraction is carried as nanoseconds past 999,999,999.
    let nanos = i64::from(at.nanosecond().min(999_999_999));
    let (mut micros, rest) = (nanos / 1000, nanos % 1000);
    if rest > 500 || (rest == 500 && micros % 2 == 1) {
        micros += 1;
    }
    at - chrono::Duration::nanoseconds(i64::from(at.nanosecond()))
        + chrono::Duration::microseconds(micros)
}

/// A date in ISO 8601 (`YYYY-MM-DD`), with Postgres's `BC` for years before 1.
struct Date(NaiveDate);

impl std::fmt::Display for Date {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let year = self.0.year();
        let (year, era) = if year < 1 {
            (1 - year, " BC")
        } else {
            (year, "")
        };
        write!(
            formatter,
            "{year:04}-{:02}-{:02}{era}",
            self.0.month(),
            self.0.day()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rows: &CopyRows) -> &str {
        std::str::from_utf8(rows.as_bytes()).unwrap()
    }

    #[test]
    fn fields_are_tab_separated_and_rows_end_with_a_newline() {
        let mut rows = CopyRows::new();
        rows.int(1).text("a").null().bool(true);
        rows.end_row();
        rows.int(-2).opt_text(None).opt_int(Some(3)).bool(false);
        rows.end_row();
        assert_eq!(text(&rows), "1\ta\t\\N\tt\n-2\t\\N\t3\tf\n");
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn the_format_escapes_are_applied_to_text_and_json() {
        let mut rows = CopyRows::new();
        rows.text("tab\there\nnew\\line\r")
            .json(&serde_json::json!({ "quote": "a \"b\" \\ c\n" }));
        rows.end_row();
        assert_eq!(
            text(&rows),
            "tab\\there\\nnew\\\\line\\r\t{\"quote\":\"a \\\\\"b\\\\\" \\\\\\\\ c\\\\n\"}\n"
        );
    }

    #[test]
    fn timestamps_and_dates_are_written_as_postgres_reads_them() {
        let at = DateTime::parse_from_rfc3339("2026-09-01T09:05:07.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut rows = CopyRows::new();
        rows.timestamp(at)
            .date(NaiveDate::from_ymd_opt(2026, 2, 3).unwrap())
            .date(NaiveDate::from_ymd_opt(0, 1, 1).unwrap());
        rows.end_row();
        assert_eq!(
            text(&rows),
            "2026-09-01 09:05:07.123457+00\t2026-02-03\t0001-01-01 BC\n"
        );
    }

    #[test]
    fn timestamps_are_rounded_to_the_microsecond_half_to_even() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        for (given, held) in [
            (
                "2026-12-08T01:04:58.740304614Z",
                "2026-12-08T01:04:58.740305Z",
            ),
            (
                "2026-12-08T01:04:58.740304499Z",
                "2026-12-08T01:04:58.740304Z",
            ),
            (
                "2026-12-08T01:04:58.740304500Z",
                "2026-12-08T01:04:58.740304Z",
            ),
            (
                "2026-12-08T01:04:58.740305500Z",
                "2026-12-08T01:04:58.740306Z",
            ),
            ("2026-12-31T23:59:59.999999700Z", "2027-01-01T00:00:00Z"),
            ("2026-12-08T01:04:58Z", "2026-12-08T01:04:58Z"),
        ] {
            assert_eq!(to_microseconds(at(given)), at(held), "{given}");
        }
        let mut rows = CopyRows::new();
        rows.timestamp(at("2026-12-31T23:59:59.999999700Z"));
        rows.end_row();
        assert_eq!(text(&rows), "2027-01-01 00:00:00.000000+00\n");
    }

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(array_literal(Vec::<&str>::new()), "{}");
        assert_eq!(
            array_literal(["a", "b,c", "d\"e\\"]),
            "{\"a\",\"b,c\",\"d\\\"e\\\\\"}"
        );
        let id = Uuid::nil();
        assert_eq!(
            uuid_array_literal(&[id, id]),
            "{00000000-0000-0000-0000-000000000000,00000000-0000-0000-0000-000000000000}"
        );
        let mut rows = CopyRows::new();
        rows.array(&array_literal(["back\\slash"]));
        rows.end_row();
        assert_eq!(text(&rows), "{\"back\\\\\\\\slash\"}\n");
    }
}
