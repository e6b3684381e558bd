//! The Prometheus text exposition format (version 0.0.4), read for its sample lines:
//! `name{label="value",...} value [timestamp]`.
//!
//! Comment lines (`# HELP`, `# TYPE`, any other `#` line) and empty lines are skipped. A label
//! value may hold any character, with `\\`, `\"` and `\n` escaped; a value is a float as Go
//! writes it (`1`, `-2.5e3`, `NaN`, `+Inf`, `-Inf`); the timestamp, if any, is an integer
//! (milliseconds since the epoch). Blanks may stand around the braces, commas and `=`, and a
//! trailing comma may end the labels, as Prometheus accepts. An OpenMetrics exemplar after
//! the value (`# {trace_id="..."} 1`) is ignored. As Prometheus does, a line that is none of
//! these fails the whole text: [`parse`] says which line, and why.

use std::fmt;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The metric's name.
    pub(crate) name: String,
    /// Its labels, in the order written, their values unescaped.
    pub(crate) labels: Vec<(String, String)>,
    /// Its value.
    pub(crate) value: f64,
    /// Its timestamp (milliseconds since the epoch), if one was written.
    pub(crate) timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of the label `name`.
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that is not of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// The line's number, from 1.
    pub(crate) line: usize,
    /// What is wrong with it.
    pub(crate) message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every sample of `text`, in order.
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let parsed = parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        samples.extend(parsed);
    }
    Ok(samples)
}

/// One line: a sample, or `None` for a comment or an empty line.
pub(crate) fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut c = Cursor { rest: line };
    c.blanks();
    if c.rest.is_empty() || c.rest.starts_with('#') {
        return Ok(None);
    }
    let name = c
        .name(true)
        .ok_or_else(|| format!("expected a metric name at `{}`", c.shown()))?;
    c.blanks();
    let labels = if c.eat('{') { c.labels()? } else { Vec::new() };
    c.blanks();
    let token = c.token();
    if token.is_empty() {
        return Err(format!("`{name}`: no value"));
    }
    let value = float(token).ok_or_else(|| format!("`{name}`: `{token}` is not a number"))?;
    c.blanks();
    let mut timestamp_ms = None;
    if !c.rest.is_empty() && !c.rest.starts_with('#') {
        let token = c.token();
        timestamp_ms = Some(token.parse::<i64>().map_err(|_| {
            format!("`{name}`: `{token}` is not a timestamp (integer milliseconds)")
        })?);
        c.blanks();
    }
    if !c.rest.is_empty() && !c.rest.starts_with('#') {
        return Err(format!(
            "`{name}`: unexpected `{}` after the value",
            c.shown()
        ));
    }
    Ok(Some(Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    }))
}

/// A float as Go's `strconv.ParseFloat` writes the exposition's values: decimal, with an
/// exponent or not, or `NaN`, `+Inf`, `-Inf` (any case).
fn float(token: &str) -> Option<f64> {
    let digits = token.strip_prefix(['+', '-']).unwrap_or(token);
    let special = ["nan", "inf", "infinity"]
        .iter()
        .any(|s| digits.eq_ignore_ascii_case(s));
    let decimal = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if special || decimal {
        token.parse().ok()
    } else {
        None
    }
}

/// What is left of a line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// Skips spaces and tabs.
    fn blanks(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    /// Takes `c` if it comes next.
    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), or with `colon` false a label name
    /// (`[a-zA-Z_][a-zA-Z0-9_]*`).
    fn name(&mut self, colon: bool) -> Option<&'a str> {
        let ok = |b: u8, first: bool| {
            b.is_ascii_alphabetic()
                || b == b'_'
                || (colon && b == b':')
                || (!first && b.is_ascii_digit())
        };
        let bytes = self.rest.as_bytes();
        if !bytes.first().is_some_and(|&b| ok(b, true)) {
            return None;
        }
        let end = bytes
            .iter()
            .position(|&b| !ok(b, false))
            .unwrap_or(bytes.len());
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// Up to the next blank.
    fn token(&mut self) -> &'a str {
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    /// The labels after `{`, through `}`.
    fn labels(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut labels: Vec<(String, String)> = Vec::new();
        loop {
            self.blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self
                .name(false)
                .ok_or_else(|| format!("expected a label name at `{}`", self.shown()))?;
            self.blanks();
            if !self.eat('=') {
                return Err(format!(
                    "label `{name}`: expected `=` at `{}`",
                    self.shown()
                ));
            }
            self.blanks();
            if !self.eat('"') {
                return Err(format!(
                    "label `{name}`: expected a quoted value at `{}`",
                    self.shown()
                ));
            }
            let value = self.quoted().map_err(|e| format!("label `{name}`: {e}"))?;
            if labels.iter().any(|(n, _)| n == name) {
                return Err(format!("label `{name}` given twice"));
            }
            labels.push((name.to_owned(), value));
            self.blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            if !self.eat(',') {
                return Err(format!(
                    "expected `,` or `}}` after label `{name}` at `{}`",
                    self.shown()
                ));
            }
        }
    }

    /// A label value after its opening quote, through the closing one, unescaped.
    fn quoted(&mut self) -> Result<String, String> {
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => {
                        return Err(format!("unknown escape `\\{other}` in the value"));
                    }
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("the value's quote is not closed".to_owned())
    }

    /// The rest, cut short, to show in an error.
    fn shown(&self) -> String {
        let mut shown: String = self.rest.chars().take(24).collect();
        if shown.len() < self.rest.len() {
            shown.push('…');
        }
        if shown.is_empty() {
            "the end of the line".to_owned()
        } else {
            shown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        match parse_line(line) {
            Ok(Some(sample)) => sample,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_what_an_exporter_writes() {
        let text = "# HELP lameduck_ready 1 while ready, else 0.\n\
                    # TYPE lameduck_ready gauge\n\
                    lameduck_ready 1\n\
                    \n\
                    # HELP lameduck_state The current state.\n\
                    # TYPE lameduck_state gauge\n\
                    lameduck_state{state=\"starting\"} 0\n\
                    lameduck_state{state=\"ready\"} 1\n\
                    lameduck_in_flight{service=\"web\"} 3 1712345678901\n\
                    http_request_duration_seconds_bucket{le=\"+Inf\",path=\"/\"} 17\n\
                    process:cpu_seconds:rate5m 0.25\n";
        let samples = parse(text).unwrap();
        let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lameduck_ready",
                "lameduck_state",
                "lameduck_state",
                "lameduck_in_flight",
                "http_request_duration_seconds_bucket",
                "process:cpu_seconds:rate5m",
            ]
        );
        assert_eq!(samples[0].value, 1.0);
        assert!(samples[0].labels.is_empty());
        assert_eq!(samples[2].label("state"), Some("ready"));
        assert_eq!(samples[3].timestamp_ms, Some(1_712_345_678_901));
        assert_eq!(samples[3].value, 3.0);
        assert_eq!(samples[2].timestamp_ms, None);
        assert_eq!(samples[4].labels, labels(&[("le", "+Inf"), ("path", "/")]));
        assert_eq!(samples[5].value, 0.25);
    }

    #[test]
    fn unescapes_label_values_and_keeps_what_looks_like_syntax() {
        let s = one(r#"m{a="say \"hi\"",b="C:\\dir\\",c="one\ntwo",d="x,y=z}{ #"} 2"#);
        assert_eq!(
            s.labels,
            labels(&[
                ("a", "say \"hi\""),
                ("b", "C:\\dir\\"),
                ("c", "one\ntwo"),
                ("d", "x,y=z}{ #"),
            ])
        );
        assert_eq!(s.value, 2.0);
        // UTF-8 in a value is kept as it is.
        assert_eq!(
            one(r#"m{city="Zürich ☃"} 1"#).label("city"),
            Some("Zürich ☃")
        );
        // An empty value is a value.
        assert_eq!(one(r#"m{a=""} 1"#).label("a"), Some(""));
    }

    #[test]
    fn reads_the_special_values_and_exponents() {
        assert!(one("m NaN").value.is_nan());
        assert_eq!(one("m +Inf").value, f64::INFINITY);
        assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("m inf").value, f64::INFINITY);
        assert_eq!(one("m -1.5e3").value, -1500.0);
        assert_eq!(one("m 2E-2").value, 0.02);
        assert_eq!(one("m .5").value, 0.5);
        assert_eq!(one("m -0").value, 0.0);
    }

    #[test]
    fn takes_blanks_trailing_commas_crlf_and_exemplars() {
        let s = one("  m { a = \"1\" ,\tb=\"2\", }\t7   -3\r");
        assert_eq!(s.labels, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!((s.value, s.timestamp_ms), (7.0, Some(-3)));
        assert!(one("m{} 1").labels.is_empty());
        let s = one(r#"m{a="b"} 4 # {trace_id="abc"} 1.0"#);
        assert_eq!((s.value, s.timestamp_ms), (4.0, None));
        assert_eq!(parse_line("   ").unwrap(), None);
        assert_eq!(parse_line("#").unwrap(), None);
        assert_eq!(parse_line("  # a comment with \"quotes\" {").unwrap(), None);
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(parse("a 1\r\nb 2\r\n").unwrap().len(), 2);
    }

    #[test]
    fn says_what_is_wrong_and_where() {
        let err = |line: &str| match parse_line(line) {
            Err(e) => e,
            Ok(s) => panic!("{line:?} parsed: {s:?}"),
        };
        assert!(err("m").contains("no value"), "{}", err("m"));
        assert!(err("m x").contains("`x` is not a number"));
        assert!(err("m 0x10").contains("is not a number"));
        assert!(err("m 1 2.5").contains("not a timestamp"));
        assert!(err("m 1 2 3").contains("unexpected `3`"));
        assert!(err("9m 1").contains("expected a metric name"));
        assert!(err("m{a=\"b} 1").contains("not closed"));
        assert!(err("m{a=\"b\\\"} 1").contains("not closed"));
        assert!(err(r#"m{a="\t"} 1"#).contains("unknown escape `\\t`"));
        assert!(err(r#"m{a="1" b="2"} 1"#).contains("expected `,` or `}`"));
        assert!(err(r#"m{a=1} 1"#).contains("expected a quoted value"));
        assert!(err(r#"m{a:b="1"} 1"#).contains("expected `=`"));
        assert!(err(r#"m{1a="1"} 1"#).contains("expected a label name"));
        assert!(err(r#"m{a="1",a="2"} 1"#).contains("given twice"));
        assert!(err(r#"m{a="1""#).contains("expected `,` or `}`"));
        let e = parse("a 1\n# TYPE b gauge\nb{x=\"y\"} oops\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.to_string(), "line 3: `b`: `oops` is not a number");
    }
}
