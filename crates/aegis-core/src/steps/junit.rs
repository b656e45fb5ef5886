//! JUnit XML reports parsed into `{total, passed, failed, skipped, failures}`.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value, json};

/// The counts and failures of a JUnit report.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Report {
    pub(crate) total: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) failures: Vec<Value>,
}

impl Report {
    pub(crate) fn passed(&self) -> u64 {
        self.total.saturating_sub(self.failed + self.skipped)
    }
}

/// The failure being read: the test case it belongs to and its text so far.
struct OpenFailure {
    entry: Map<String, Value>,
    text: String,
}

/// Parses a JUnit XML document (`<testsuites>` or `<testsuite>` at the root).
/// The error is a lowercase fragment saying what is wrong and where.
pub(crate) fn parse(xml: &str) -> Result<Report, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut report = Report::default();
    let mut depth = 0usize;
    let mut seen_root = false;
    // The attributes of the test case being read.
    let mut case: Option<Map<String, Value>> = None;
    let mut case_failed = false;
    let mut failure: Option<OpenFailure> = None;
    loop {
        let position = reader.buffer_position();
        let event =
            reader.read_event().map_err(|e| format!("invalid xml at byte {position}: {e}"))?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let empty = matches!(event, Event::Empty(_));
                let name = start.local_name().as_ref().to_owned();
                if !seen_root {
                    if name != "testsuites" && name != "testsuite" {
                        return Err(format!(
                            "not a junit report: the root element is <{name}>, expected <testsuites> or <testsuite>"
                        ));
                    }
                    seen_root = true;
                }
                match name.as_str() {
                    "testcase" => {
                        report.total += 1;
                        let mut entry = Map::new();
                        for key in ["name", "classname", "file"] {
                            if let Some(value) = attribute(start, key)? {
                                entry.insert(key.into(), Value::String(value));
                            }
                        }
                        case_failed = false;
                        case = (!empty).then_some(entry);
                    }
                    "failure" | "error" if case.is_some() => {
                        let mut entry = case.clone().unwrap_or_default();
                        entry.insert("kind".into(), Value::String(name.clone()));
                        for key in ["message", "type"] {
                            if let Some(value) = attribute(start, key)? {
                                entry.insert(key.into(), Value::String(value));
                            }
                        }
                        if !case_failed {
                            report.failed += 1;
                            case_failed = true;
                        }
                        if empty {
                            report.failures.push(Value::Object(entry));
                        } else {
                            failure = Some(OpenFailure { entry, text: String::new() });
                        }
                    }
                    "skipped" if case.is_some() && !case_failed => {
                        report.skipped += 1;
                        case_failed = true;
                    }
                    _ => {}
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                match end.local_name().as_ref() {
                    "failure" | "error" => {
                        if let Some(mut open) = failure.take() {
                            let text = open.text.trim();
                            if !text.is_empty() {
                                open.entry.insert("details".into(), Value::String(text.to_owned()));
                            }
                            report.failures.push(Value::Object(open.entry));
                        }
                    }
                    "testcase" => case = None,
                    _ => {}
                }
            }
            Event::Text(text) => {
                if let Some(open) = failure.as_mut() {
                    open.text.push_str(&text.xml_content(XmlVersion::Implicit1_0));
                }
            }
            Event::CData(text) => {
                if let Some(open) = failure.as_mut() {
                    open.text.push_str(text.as_ref());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(open) = failure.as_mut() {
                    if let Ok(Some(c)) = reference.resolve_char_ref() {
                        open.text.push(c);
                    } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(
                        &reference.xml_content(XmlVersion::Implicit1_0),
                    ) {
                        open.text.push_str(s);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root {
        return Err("not a junit report: no <testsuites> or <testsuite> element".into());
    }
    if depth > 0 {
        return Err("invalid xml: the document ends inside an element".into());
    }
    Ok(report)
}

fn attribute(start: &BytesStart<'_>, key: &str) -> Result<Option<String>, String> {
    for attr in start.attributes() {
        let attr = attr.map_err(|e| format!("invalid xml attribute: {e}"))?;
        if attr.key.local_name().as_ref() == key {
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| format!("invalid xml attribute {key:?}: {e}"))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

impl Report {
    /// The report as step data, with the command's exit code.
    pub(crate) fn to_data(&self, exit_code: Option<i32>) -> Value {
        json!({
            "exit_code": exit_code,
            "total": self.total,
            "passed": self.passed(),
            "failed": self.failed,
            "skipped": self.skipped,
            "failures": self.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_one_failure() {
        let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="demo" tests="3">
  <testcase classname="demo" name="a" time="0.1"/>
  <testcase classname="demo" name="b"><failure message="expected 1, got 2">trace &amp; more</failure></testcase>
  <testcase classname="demo" name="c"><skipped/></testcase>
</testsuite></testsuites>"#;
        let report = parse(xml).expect("valid report");
        assert_eq!((report.total, report.failed, report.skipped, report.passed()), (3, 1, 1, 1));
        assert_eq!(
            report.failures,
            vec![json!({"name": "b", "classname": "demo", "kind": "failure",
                        "message": "expected 1, got 2", "details": "trace & more"})]
        );
    }

    #[test]
    fn malformed_reports_are_errors() {
        for (xml, expected) in [
            ("<testsuite><testcase></testsuite>", "invalid xml"),
            ("<testsuite><testcase>", "ends inside an element"),
            ("<html/>", "root element is <html>"),
            ("", "no <testsuites>"),
            ("not xml at all", "no <testsuites>"),
        ] {
            let err = parse(xml).expect_err(xml);
            assert!(err.contains(expected), "{xml:?}: {err}");
        }
    }
}
