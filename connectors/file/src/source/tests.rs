//! The file source's unit tests.

use super::*;
use std::io::Write;

fn source(path: &str, format: Format) -> FileSource {
    FileSource::new(
        FileSourceConfig {
            path: path.to_string(),
            format,
            poll_interval: Duration::from_millis(20),
            max_line_bytes: 64,
        },
        false,
        Vec::new(),
    )
}

fn source_once(path: &str, format: Format, once: bool) -> FileSource {
    let mut s = source(path, format);
    s.once = once;
    s
}

fn values(items: &[SourceItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            SourceItem::Record(r) => r.value.to_string(),
            SourceItem::Invalid(x) => format!("INVALID {}", x.raw),
        })
        .collect()
}

#[tokio::test]
async fn partial_lines_wait_for_their_newline_and_positions_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"{\"n\":1}\n{\"n\":2}\n{\"n\"").unwrap();
    let mut src = source(path.to_str().unwrap(), Format::Json);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(values(&got), ["{\"n\":1}", "{\"n\":2}"]);
    f.write_all(b":3}\nnot json\n").unwrap();
    let got2 = src.poll(100).await.unwrap();
    assert_eq!(values(&got2), ["{\"n\":3}", "INVALID not json"]);

    // Resume after the second record: the next one is n=3.
    let mut committed = Positions::new();
    committed.advance(got[1].position());
    let mut again = source(path.to_str().unwrap(), Format::Json);
    again
        .open(&committed, &SourceContext::detached())
        .await
        .unwrap();
    let got3 = again.poll(100).await.unwrap();
    assert_eq!(values(&got3), ["{\"n\":3}", "INVALID not json"]);
}

#[tokio::test]
async fn renamed_file_keeps_position_and_new_file_starts_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let glob = format!("{}/*.log", dir.path().display());
    let a = dir.path().join("app.log");
    fs::write(&a, "one\ntwo\n").unwrap();
    let mut src = source(&glob, Format::Text);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(values(&got), ["\"one\"", "\"two\""]);
    let mut committed = Positions::new();
    committed.advance(got[1].position());

    // Rotate: rename away (still matching), write more to the old file, new file.
    fs::rename(&a, dir.path().join("app-1.log")).unwrap();
    let mut old = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("app-1.log"))
        .unwrap();
    old.write_all(b"three\n").unwrap();
    fs::write(&a, "fresh\n").unwrap();

    // A restarted source resumes the renamed file after "two".
    let mut again = source(&glob, Format::Text);
    again
        .open(&committed, &SourceContext::detached())
        .await
        .unwrap();
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(values(&again.poll(100).await.unwrap()));
    }
    all.sort();
    assert_eq!(all, ["\"fresh\"", "\"three\""]);
}

#[tokio::test]
async fn long_lines_are_invalid_and_truncation_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt");
    let long = "x".repeat(200);
    fs::write(&path, format!("short\n{long}\nafter\n")).unwrap();
    let mut src = source(path.to_str().unwrap(), Format::Text);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        matches!(&got[1], SourceItem::Invalid(i) if i.error.contains("longer than max_line_bytes"))
    );
    assert_eq!(got[2].position().offset, Value::from(6 + 201 + 6));

    fs::write(&path, "new\n").unwrap(); // truncate in place
    let mut after = Vec::new();
    for _ in 0..3 {
        after.extend(values(&src.poll(100).await.unwrap()));
    }
    assert_eq!(after, ["\"new\""]);
}

#[tokio::test]
async fn an_unclosed_csv_quote_costs_only_its_line_at_the_end_of_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.csv");
    fs::write(&path, "id,v\n1,a\n2,\"oops\n3,c\n4,d\n").unwrap();
    let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(
        values(&got),
        [
            r#"{"id":"1","v":"a"}"#,
            "INVALID 2,\"oops",
            r#"{"id":"3","v":"c"}"#,
            r#"{"id":"4","v":"d"}"#
        ]
    );
    // The bad record's position is just past its own line.
    assert_eq!(got[1].position().offset, Value::from(5 + 4 + 8));
    let SourceItem::Invalid(bad) = &got[1] else {
        unreachable!()
    };
    assert!(bad.error.contains("never closes"), "{}", bad.error);
}

#[tokio::test]
async fn an_unclosed_csv_quote_costs_only_its_line_when_the_row_grows_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.csv");
    // max_line_bytes is 64: the open row passes it after a few rows.
    let mut text = String::from("id,v\n1,a\n2,\"oops\n");
    for n in 3..40 {
        text.push_str(&format!("{n},x\n"));
    }
    fs::write(&path, &text).unwrap();
    let mut src = source_once(path.to_str().unwrap(), Format::Csv, false);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(src.poll(100).await.unwrap());
    }
    let v = values(&got);
    assert_eq!(v[0], r#"{"id":"1","v":"a"}"#);
    assert!(v[1].starts_with("INVALID 2,\"oops"), "{}", v[1]);
    assert_eq!(
        v.len(),
        2 + 37,
        "every row after the bad line is read: {v:?}"
    );
    assert_eq!(v[38], r#"{"id":"39","v":"x"}"#);
}

#[tokio::test]
async fn an_unterminated_last_line_stays_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    fs::write(&path, "{\"n\":1}\n{\"n\":2}").unwrap();
    let mut src = source_once(path.to_str().unwrap(), Format::Json, true);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(values(&got), ["{\"n\":1}"]);
    assert!(src.poll(100).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_byte_order_mark_is_not_part_of_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("a.jsonl");
    fs::write(&json, "\u{feff}{\"n\":1}\n{\"n\":2}\n").unwrap();
    let mut src = source(json.to_str().unwrap(), Format::Json);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    assert_eq!(
        values(&src.poll(100).await.unwrap()),
        ["{\"n\":1}", "{\"n\":2}"]
    );

    let csv = dir.path().join("a.csv");
    fs::write(&csv, "\u{feff}id,v\n1,a\n").unwrap();
    let mut src = source(csv.to_str().unwrap(), Format::Csv);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(values(&got), [r#"{"id":"1","v":"a"}"#]);
    // A resumed file reads its header the same way.
    let mut committed = Positions::new();
    committed.advance(got[0].position());
    fs::OpenOptions::new()
        .append(true)
        .open(&csv)
        .unwrap()
        .write_all(b"2,b\n")
        .unwrap();
    let mut again = source(csv.to_str().unwrap(), Format::Csv);
    again
        .open(&committed, &SourceContext::detached())
        .await
        .unwrap();
    assert_eq!(
        values(&again.poll(100).await.unwrap()),
        [r#"{"id":"2","v":"b"}"#]
    );
}

#[tokio::test]
async fn a_quote_inside_an_unquoted_csv_field_is_a_plain_character() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    fs::write(&path, "id,h\n1,5'10\"\n2,a\n3,b\n4,6'1\"\n5,c\n").unwrap();
    let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    // Compared as values: key order depends on serde_json's features.
    let got: Vec<Value> = got
        .iter()
        .map(|i| match i {
            SourceItem::Record(r) => (*r.value).clone(),
            SourceItem::Invalid(x) => panic!("a bad record: {x:?}"),
        })
        .collect();
    let h = ["5'10\"", "a", "b", "6'1\"", "c"];
    let want: Vec<Value> = h
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"id": (i + 1).to_string(), "h": h}))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_csv_header_longer_than_max_line_bytes_is_not_replaced_by_the_first_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.csv");
    let header = format!("{},v\n", "x".repeat(80));
    fs::write(&path, format!("{header}1,a\n2,b\n")).unwrap();
    let mut src = source_once(path.to_str().unwrap(), Format::Csv, true);
    src.open(&Positions::new(), &SourceContext::detached())
        .await
        .unwrap();
    let got = src.poll(100).await.unwrap();
    assert_eq!(got.len(), 3);
    for item in &got {
        assert!(matches!(item, SourceItem::Invalid(_)), "{item:?}");
    }
    // Resumed after row 1: the header is refused the same way.
    let mut committed = Positions::new();
    committed.advance(got[1].position());
    let mut again = source_once(path.to_str().unwrap(), Format::Csv, true);
    again
        .open(&committed, &SourceContext::detached())
        .await
        .unwrap();
    let rest = again.poll(100).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(
        matches!(&rest[0], SourceItem::Invalid(i) if i.error.contains("header")),
        "{rest:?}"
    );
}
