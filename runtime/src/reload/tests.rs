use super::*;
use crate::config::load_str;
use crate::registry::Registry;

fn pipeline(file: &str, name: &str, out: &str) -> PipelineConfig {
    let text = format!(
        "name: {name}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: file\n  path: {out}\n"
    );
    load_str(Path::new(file), &text, &Registry::builtin(), &|_| None).unwrap()
}

fn found(p: PipelineConfig) -> Found {
    Found {
        file: p.file.clone(),
        result: Ok(p),
    }
}

fn invalid(file: &str) -> Found {
    let result = load_str(Path::new(file), "name: [", &Registry::builtin(), &|_| None);
    Found {
        file: file.into(),
        result: Err(result.unwrap_err()),
    }
}

fn running(p: &PipelineConfig) -> Running<'_> {
    Running {
        name: &p.name,
        file: &p.file,
        definition: &p.definition,
    }
}

/// The plan in words, one per change, sorted.
fn words(changes: &[Change]) -> Vec<String> {
    let mut w: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Added(p) => format!("added {} from {}", p.name, p.file.display()),
            Change::Changed(p) => format!("changed {} from {}", p.name, p.file.display()),
            Change::Removed { name, why } => format!("removed {name}: {why}"),
            Change::Invalid { file, running, .. } => {
                format!("invalid {} keeps {running:?}", file.display())
            }
            Change::Collides { file, name, other } => {
                format!(
                    "{} collides on {name} with {}",
                    file.display(),
                    other.display()
                )
            }
            Change::Unchanged { name } => format!("unchanged {name}"),
        })
        .collect();
    w.sort();
    w
}

#[test]
fn a_file_saved_unchanged_changes_nothing_and_an_edit_changes_only_its_pipeline() {
    let a = pipeline("a.yaml", "a", "a.out");
    let b = pipeline("b.yaml", "b", "b.out");
    let now = [running(&a), running(&b)];
    let same = plan(
        &now,
        vec![
            found(pipeline("a.yaml", "a", "a.out")),
            found(pipeline("b.yaml", "b", "b.out")),
        ],
        &[],
    );
    assert_eq!(words(&same), ["unchanged a", "unchanged b"]);
    let edited = plan(
        &now,
        vec![
            found(pipeline("a.yaml", "a", "a2.out")),
            found(pipeline("b.yaml", "b", "b.out")),
        ],
        &[],
    );
    assert_eq!(words(&edited), ["changed a from a.yaml", "unchanged b"]);
}

#[test]
fn files_added_removed_and_renamed() {
    let a = pipeline("a.yaml", "a", "a.out");
    let b = pipeline("b.yaml", "b", "b.out");
    let now = [running(&a), running(&b)];
    let changes = plan(
        &now,
        vec![
            found(pipeline("a.yaml", "a2", "a.out")),
            found(pipeline("c.yaml", "c", "c.out")),
        ],
        &[],
    );
    assert_eq!(
        words(&changes),
        [
            "added a2 from a.yaml",
            "added c from c.yaml",
            "removed a: its file names another pipeline now",
            "removed b: its file was removed",
        ]
    );
}

#[test]
fn a_pipeline_whose_file_moved_is_changed_not_removed() {
    let a = pipeline("a.yaml", "a", "a.out");
    let changes = plan(
        &[running(&a)],
        vec![found(pipeline("moved.yaml", "a", "a.out"))],
        &[],
    );
    assert_eq!(words(&changes), ["changed a from moved.yaml"]);
}

#[test]
fn an_invalid_file_keeps_its_pipeline_and_a_new_invalid_file_adds_nothing() {
    let a = pipeline("a.yaml", "a", "a.out");
    let changes = plan(
        &[running(&a)],
        vec![invalid("a.yaml"), invalid("new.yaml")],
        &[],
    );
    assert_eq!(
        words(&changes),
        [
            "invalid a.yaml keeps Some(\"a\")",
            "invalid new.yaml keeps None"
        ]
    );
}

#[test]
fn a_name_taken_by_another_file_is_refused_and_the_running_one_untouched() {
    let a = pipeline("a.yaml", "a", "a.out");
    let changes = plan(
        &[running(&a)],
        vec![
            found(pipeline("a.yaml", "a", "a.out")),
            found(pipeline("b.yaml", "a", "b.out")),
            found(pipeline("c.yaml", "new", "c.out")),
            found(pipeline("d.yaml", "new", "d.out")),
        ],
        &[],
    );
    assert_eq!(
        words(&changes),
        [
            "added new from c.yaml",
            "b.yaml collides on a with a.yaml",
            "d.yaml collides on new with c.yaml",
            "unchanged a",
        ]
    );
}

#[test]
fn the_pipelines_of_a_folder_that_cannot_be_read_are_kept() {
    let a = pipeline("conf/a.yaml", "a", "a.out");
    let changes = plan(&[running(&a)], vec![], &[PathBuf::from("conf")]);
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn the_running_file_renamed_keeps_its_pipeline_against_a_refused_file() {
    let a = pipeline("a.yaml", "p", "a.out");
    let changes = plan(
        &[running(&a)],
        vec![
            found(pipeline("b.yaml", "p", "b.out")),
            found(pipeline("z.yaml", "p", "a.out")),
        ],
        &[],
    );
    assert_eq!(
        words(&changes),
        ["b.yaml collides on p with z.yaml", "changed p from z.yaml"]
    );
}

#[test]
fn a_pipeline_file_given_by_itself_and_gone_is_removed() {
    let a = pipeline("conf/a.yaml", "a", "a.out");
    let changes = plan(&[running(&a)], vec![], &[PathBuf::from("conf/a.yaml")]);
    assert_eq!(words(&changes), ["removed a: its file was removed"]);
}
