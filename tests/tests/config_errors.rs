//! `ferry validate` on broken pipeline files: each fixture in
//! tests/fixtures/bad-configs has the exact expected output beside it.

use std::fs;
use std::process::Command;

use ferry_tests::*;

#[test]
fn every_broken_fixture_reports_its_expected_errors() {
    let root = workspace_root();
    let dir = root.join("tests/fixtures/bad-configs");
    let mut fixtures: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 6);
    for yaml in fixtures {
        let rel = yaml.strip_prefix(&root).unwrap();
        let out = Command::new(ferry_bin())
            .args(["validate", rel.to_str().unwrap()])
            .current_dir(&root)
            .env("FERRY_TEST_SECRET", "hunter2-secret")
            .env_remove("FERRY_TEST_UNSET_VARIABLE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = fs::read_to_string(yaml.with_extension("expected")).unwrap();
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", rel.display());
        assert_eq!(stderr, expected, "{}", rel.display());
        assert!(
            !stderr.contains("hunter2-secret"),
            "a secret leaked: {stderr}"
        );
    }
}

#[test]
fn duplicate_pipeline_names_across_files_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = "name: same\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out.jsonl\n";
    fs::write(dir.path().join("a.yaml"), p).unwrap();
    fs::write(dir.path().join("b.yml"), p).unwrap();
    let out = ferry_output(dir.path(), &["validate", "."]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("./b.yml:1:7: name: pipeline name \"same\" is already used by ./a.yaml"),
        "{stderr}"
    );
}

#[test]
fn validate_states_each_pipelines_guarantee() {
    let dir = tempfile::tempdir().unwrap();
    let base = "source:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n";
    fs::write(
        dir.path().join("tx.yaml"),
        format!("name: tx\n{base}  path: a.jsonl\n"),
    )
    .unwrap();
    fs::write(
        dir.path().join("plain.yaml"),
        format!("name: plain\n{base}  path: b.jsonl\n  transactional: false\n"),
    )
    .unwrap();
    let out = ferry_output(dir.path(), &["validate", "."]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "exactly-once: the file sink commits the source positions together with the data"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("at-least-once: after a crash the file sink may receive again"),
        "{stdout}"
    );
    assert!(stdout.contains("2 pipeline(s) valid"), "{stdout}");
}

#[test]
fn the_shipped_examples_are_valid() {
    let root = workspace_root();
    let out = ferry_output(&root, &["validate", "configs/examples"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bom.yaml"),
        "\u{feff}name: bom\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: out.jsonl\n",
    )
    .unwrap();
    let out = ferry_output(dir.path(), &["validate", "bom.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_path_does_not_hide_the_errors_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nsource:\n  type: nope\n",
    )
    .unwrap();
    let out = ferry_output(dir.path(), &["validate", "gone.yaml", "bad.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("gone.yaml:1:1: no such file or folder"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:3:9: source.type: unknown source type `nope`"),
        "{stderr}"
    );
}

#[test]
fn validate_of_a_folder_without_pipelines_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry_output(dir.path(), &["validate", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pipeline files"));
}

#[test]
fn command_line_durations_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0s", "25h", "soon"] {
        let out = ferry_output(dir.path(), &["run", "--progress-interval", bad, "."]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--progress-interval"), "{stderr}");
    }
}
