//! The value of a `json` field as a `jsonb` parameter, written so that PostgreSQL
//! gives back the same JSON value.
//!
//! `jsonb` keeps a number as `numeric`, which keeps its decimal digits but not how it
//! was written: serde_json writes the double 1e16 as `1e16`, PostgreSQL stores the
//! integer 10000000000000000 and gives back an integer. So a double with an integral
//! value is written in plain decimal with a fraction (`10000000000000000.0`), which
//! `numeric` keeps and gives back as written. Other numbers go as serde_json writes
//! them: an integer stays an integer, and a double with a fraction reads back as one
//! whatever its notation.

use std::error::Error;
use std::io;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;
use tokio_postgres::types::{accepts, to_sql_checked, IsNull, ToSql, Type};

/// A `json`/`jsonb` parameter holding a JSON value.
#[derive(Debug)]
pub struct Jsonb(pub Value);

impl ToSql for Jsonb {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The version of jsonb's binary format: 1, JSON text follows.
            out.put_u8(1);
        }
        let mut serializer =
            serde_json::Serializer::with_formatter(out.writer(), IntegralDoublesWithFraction);
        self.0.serialize(&mut serializer)?;
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

/// serde_json's compact JSON, except that a double with an integral value is written
/// in plain decimal with `.0`.
struct IntegralDoublesWithFraction;

impl Formatter for IntegralDoublesWithFraction {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        if value.fract() == 0.0 {
            // `Display` of a double: the shortest digits that read back as it, in plain
            // decimal (never an exponent), e.g. `1797693134862315700…0` for f64::MAX.
            write!(writer, "{value}.0")
        } else {
            CompactFormatter.write_f64(writer, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: Value) -> String {
        let mut out = BytesMut::new();
        Jsonb(value).to_sql(&Type::JSON, &mut out).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn integral_doubles_are_written_with_a_fraction_and_read_back_as_doubles() {
        let value = json!({"f": 1e16, "one": 1.0, "i": 10_000_000_000_000_000i64, "t": 1e-7, "m": 0.1, "max": f64::MAX});
        let written = text(value.clone());
        assert!(written.contains(r#""f":10000000000000000.0"#), "{written}");
        assert!(written.contains(r#""i":10000000000000000,"#), "{written}");
        assert!(written.contains(r#""one":1.0"#), "{written}");
        assert!(written.contains(r#""t":1e-7"#), "{written}");
        let back: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            back.to_string(),
            value.to_string(),
            "the same value, integers and doubles apart"
        );
    }

    #[test]
    fn jsonb_carries_its_format_version() {
        let mut out = BytesMut::new();
        Jsonb(json!([1])).to_sql(&Type::JSONB, &mut out).unwrap();
        assert_eq!(&out[..], b"\x01[1]");
    }
}
