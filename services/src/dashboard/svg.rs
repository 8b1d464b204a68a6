//! Line charts as inline SVG, written directly: one `<svg class="chart">` per metric
//! with a polyline per series, its y range and time span labelled. A chart is a few
//! hundred bytes and needs no script, font or stylesheet beyond the page's own (the
//! series' colours are CSS classes `s0`…`s7`).

use std::fmt::Write;

use super::html::Escaped;

/// Width and height of a chart's view box; the page scales it to the column.
const W: f64 = 320.0;
const H: f64 = 120.0;
/// Room for the axis labels on the left and at the bottom.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 16.0;

/// One line: its name and its points (x: seconds relative to the newest snapshot,
/// so ≤ 0; `None`: no value at that instant, the line breaks).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, Option<f64>)>,
}

/// A chart of `series` named `metric`, for `flag` (data attributes the browser test
/// reads), titled `title`, its values shown by `unit`.
pub fn chart(out: &mut String, flag: &str, metric: &str, title: &str, unit: Unit, series: &[Series<'_>]) {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        let lo = lo.min(0.0);
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let span = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| -x))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let x_of = |x: f64| LEFT + (W - LEFT - 4.0) * (1.0 + x / span);
    let y_of = |y: f64| 4.0 + (H - BOTTOM - 8.0) * (1.0 - (y - lo) / (hi - lo));

    let _ = write!(
        out,
        r#"<figure><figcaption>{title}</figcaption><svg class="chart" data-flag="{flag}" data-metric="{metric}" viewBox="0 0 {W} {H}" role="img" aria-label="{title}">"#,
        title = Escaped(title),
        flag = Escaped(flag),
        metric = Escaped(metric),
    );
    let _ = write!(
        out,
        r#"<path class="axis" d="M{LEFT} 4V{b}H{r}"/><text x="{tx}" y="12" class="tick">{hi}</text><text x="{tx}" y="{b}" class="tick">{lo}</text><text x="{LEFT}" y="{ty}" class="tick">-{span}</text><text x="{r}" y="{ty}" class="tick end">now</text>"#,
        b = H - BOTTOM,
        r = W - 4.0,
        tx = LEFT - 4.0,
        ty = H - 3.0,
        hi = unit.show(hi),
        lo = unit.show(lo),
        span = duration(span),
    );
    let mut drawn = false;
    for (i, s) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_down = false;
        for (x, y) in &s.points {
            match y {
                Some(y) => {
                    // A new stroke starts with a dot (a zero-length segment with round
                    // caps), so a value between two gaps still shows.
                    let (cmd, dot) = if pen_down { ("L", "") } else { ("M", "h0.01") };
                    let _ = write!(d, "{cmd}{:.1} {:.1}{dot}", x_of(*x), y_of(*y));
                    pen_down = true;
                    drawn = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                out,
                r#"<path class="line s{}" d="{d}"><title>{}</title></path>"#,
                i % 8,
                Escaped(s.name)
            );
        }
    }
    if !drawn {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" class="tick">collecting…</text>"#,
            LEFT + 8.0,
            H / 2.0
        );
    }
    out.push_str("</svg></figure>");
}

/// How a chart's values read.
#[derive(Clone, Copy)]
pub enum Unit {
    /// A plain number (counts, rates per second).
    Number,
    /// A fraction shown as a percentage.
    Ratio,
    /// Microseconds.
    Micros,
    /// Bytes.
    Bytes,
}

impl Unit {
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Number => number(v),
            Unit::Ratio => percent(v),
            Unit::Micros => micros(v),
            Unit::Bytes => bytes(v),
        }
    }
}

/// `1234.5` → `1.2k`, small values with up to two decimals.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn percent(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.001 {
        format!("{:.3}%", v * 100.0)
    } else {
        format!("{:.1}%", v * 100.0)
    }
}

pub fn micros(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

pub fn bytes(v: f64) -> String {
    if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_a_line_per_series_and_escapes_names() {
        let mut out = String::new();
        let series = [
            Series {
                name: "on",
                points: vec![(-20.0, Some(1.0)), (-10.0, None), (0.0, Some(3.0))],
            },
            Series {
                name: "<b>",
                points: vec![(-20.0, Some(0.5)), (0.0, Some(0.25))],
            },
        ];
        chart(&mut out, "f\"", "reads", "Reads/s", Unit::Number, &series);
        assert_eq!(out.matches("<svg class=\"chart\"").count(), 1);
        assert_eq!(out.matches("class=\"line s").count(), 2);
        assert!(out.contains("data-flag=\"f&quot;\""));
        assert!(out.contains("<title>&lt;b&gt;</title>"));
        assert!(!out.contains("<b>"));
        // The gap breaks the first line: two moves, no line between them.
        let first = out.split("class=\"line s0\" d=\"").nth(1).unwrap();
        assert_eq!(first.split('"').next().unwrap().matches('M').count(), 2);

        let mut empty = String::new();
        chart(&mut empty, "f", "reads", "Reads/s", Unit::Number, &[]);
        assert!(empty.contains("collecting"));
    }

    #[test]
    fn values_read_in_their_unit() {
        assert_eq!(number(12_345.0), "12.3k");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(percent(0.9876), "98.8%");
        assert_eq!(micros(1500.0), "1.5 ms");
        assert_eq!(bytes(2048.0), "2.0 KiB");
    }
}
