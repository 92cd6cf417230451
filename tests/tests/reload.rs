//! Hot reload of pipeline files while ferry runs: real processes, real
//! files, the file watcher and SIGHUP.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ferry_tests::*;
use libc::SIGHUP;

/// A file → file pipeline reading `input`/*.jsonl into `out`.
fn pipeline(name: &str, input: &str, out: &str, extra: &str) -> String {
    format!(
        "name: {name}\nsource:\n  type: file\n  path: {input}/*.jsonl\n  poll_interval: 50ms\nsink:\n  type: file\n  path: {out}\ndelivery:\n  flush_interval: 100ms\n{extra}"
    )
}

/// Every record of `tag` from 0 to `n` in `path`, once each, in order.
fn assert_once(path: &Path, tag: &str, n: u64) {
    let problems = check_exactly_once(&read_jsonl(path), &[(tag, n)]);
    assert!(problems.is_empty(), "{}: {problems:?}", path.display());
}

/// Occurrences of `needle` in the log.
fn said(f: &Ferry, needle: &str) -> usize {
    f.log_text().matches(needle).count()
}

fn wait_for(f: &Ferry, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(20), cond),
        "waiting for {what}: {}",
        f.log_text()
    );
}

#[test]
fn added_changed_invalid_removed_and_renamed_files_apply_while_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for input in ["in_a", "in_b", "in_c"] {
        fs::create_dir_all(d.join(input)).unwrap();
    }
    fs::create_dir_all(d.join("conf")).unwrap();
    append_test_input(&d.join("in_a/a.jsonl"), "a", 0, 10);
    append_test_input(&d.join("in_b/b.jsonl"), "b", 0, 10);
    append_test_input(&d.join("in_c/c.jsonl"), "c", 0, 10);
    fs::write(
        d.join("conf/keep.yaml"),
        pipeline("keep", "in_b", "out/keep.jsonl", ""),
    )
    .unwrap();
    fs::write(
        d.join("conf/edit.yaml"),
        pipeline("edit", "in_a", "out/edit.jsonl", ""),
    )
    .unwrap();
    let mut f = Ferry::start(d, &["run", "conf"]);
    wait_for(&f, "both pipelines", || {
        lines_in(&d.join("out/keep.jsonl")) == 10 && lines_in(&d.join("out/edit.jsonl")) == 10
    });
    assert_eq!(said(&f, "reload: pipeline added"), 2, "{}", f.log_text());

    // Added.
    fs::write(
        d.join("conf/new.yaml"),
        pipeline("new", "in_c", "out/new.jsonl", ""),
    )
    .unwrap();
    wait_for(&f, "the new pipeline", || {
        lines_in(&d.join("out/new.jsonl")) == 10
    });
    assert!(
        f.log_text().contains("reload: pipeline added pipeline=new"),
        "{}",
        f.log_text()
    );

    // Saved unchanged: nothing happens.
    fs::write(
        d.join("conf/new.yaml"),
        pipeline("new", "in_c", "out/new.jsonl", ""),
    )
    .unwrap();

    // Changed: drained, then the new definition goes on from the
    // committed positions.
    let edited = pipeline("edit", "in_a", "out/edit.jsonl", "  batch_size: 500\n");
    fs::write(d.join("conf/edit.yaml"), &edited).unwrap();
    wait_for(&f, "the change", || {
        said(&f, "reload: pipeline changed") == 1
    });
    append_test_input(&d.join("in_a/a.jsonl"), "a", 10, 15);
    wait_for(&f, "records after the change", || {
        lines_in(&d.join("out/edit.jsonl")) == 15
    });

    // Invalid: the pipeline runs on its previous definition.
    fs::write(
        d.join("conf/edit.yaml"),
        "name: edit\nsource:\n  type: file\n  pth: x\n",
    )
    .unwrap();
    wait_for(&f, "the invalid file reported", || {
        f.log_text()
            .contains("goes on with its previous definition")
    });
    let log = f.log_text();
    assert!(
        log.contains("conf/edit.yaml:4:3: source.pth: unknown key `pth`"),
        "{log}"
    );
    assert!(
        log.contains("conf/edit.yaml:1:1: missing key `sink`"),
        "{log}"
    );
    append_test_input(&d.join("in_a/a.jsonl"), "a", 15, 20);
    wait_for(&f, "records on the old definition", || {
        lines_in(&d.join("out/edit.jsonl")) == 20
    });

    // Fixed back to what runs: unchanged, nothing restarts.
    fs::write(d.join("conf/edit.yaml"), &edited).unwrap();

    // A second file naming a running pipeline is refused.
    fs::write(
        d.join("conf/dup.yaml"),
        pipeline("keep", "in_c", "out/dup.jsonl", ""),
    )
    .unwrap();
    wait_for(&f, "the collision", || {
        f.log_text()
            .contains(r#"reload: refused: pipeline name "keep" is already used by conf/keep.yaml"#)
    });
    // Said once, not again at every reload while it stands.
    fs::write(d.join("conf/edit.yaml"), format!("{edited}# saved again\n")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(said(&f, "reload: refused"), 1, "{}", f.log_text());
    fs::remove_file(d.join("conf/dup.yaml")).unwrap();

    // Removed: drained and stopped.
    fs::remove_file(d.join("conf/new.yaml")).unwrap();
    wait_for(&f, "the removal", || {
        f.log_text()
            .contains("reload: pipeline removed (its file was removed)")
    });
    append_test_input(&d.join("in_c/c.jsonl"), "c", 10, 12);

    // Renamed: a removal and an addition. The new name has no offsets of
    // its own: it reads its source from the start, into its own output
    // (the file sink refuses another pipeline's output file).
    fs::write(
        d.join("conf/keep.yaml"),
        pipeline("kept", "in_b", "out/kept.jsonl", ""),
    )
    .unwrap();
    wait_for(&f, "the rename", || {
        f.log_text()
            .contains("reload: pipeline removed (its file names another pipeline now)")
    });
    append_test_input(&d.join("in_b/b.jsonl"), "b", 10, 13);
    wait_for(&f, "records after the rename", || {
        lines_in(&d.join("out/kept.jsonl")) == 13
    });

    std::thread::sleep(Duration::from_millis(500));
    f.stop();
    let log = f.log_text();
    // Each pipeline started once per definition: the unchanged pipelines
    // were never restarted by the reloads around them.
    assert_eq!(said(&f, "reload: pipeline changed"), 1, "{log}");
    assert_eq!(said(&f, "reload: pipeline added"), 4, "{log}");
    assert_eq!(said(&f, "pipeline started"), 5, "{log}");
    assert_eq!(
        lines_in(&d.join("out/new.jsonl")),
        10,
        "a removed pipeline reads no more"
    );
    assert_once(&d.join("out/kept.jsonl"), "b", 13);
    assert_once(&d.join("out/keep.jsonl"), "b", 10);
    assert_once(&d.join("out/edit.jsonl"), "a", 20);
}

#[test]
fn an_invalid_file_at_start_is_skipped_while_watching_and_picked_up_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("conf")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(
        d.join("conf/good.yaml"),
        pipeline("good", "in", "out/good.jsonl", ""),
    )
    .unwrap();
    fs::write(
        d.join("conf/bad.yaml"),
        "name: bad\nsource:\n  type: nope\n",
    )
    .unwrap();

    // Without watching, as before: the start stops, exit 2.
    let (status, log) = run_to_end(d, &["run", "--no-watch", "conf"], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("conf/bad.yaml:3:9: source.type: unknown source type `nope`"),
        "{log}"
    );

    let mut f = Ferry::start(d, &["run", "conf"]);
    wait_for(&f, "the good pipeline", || {
        lines_in(&d.join("out/good.jsonl")) == 10
    });
    assert!(
        f.log_text()
            .contains("conf/bad.yaml:3:9: source.type: unknown source type `nope`"),
        "{}",
        f.log_text()
    );
    fs::write(
        d.join("conf/bad.yaml"),
        pipeline("bad", "in", "out/bad.jsonl", ""),
    )
    .unwrap();
    wait_for(&f, "the fixed pipeline", || {
        lines_in(&d.join("out/bad.jsonl")) == 10
    });
    f.stop();
}

#[test]
fn sighup_reloads_without_watching() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(d.join("p.yaml"), pipeline("p", "in", "out/one.jsonl", "")).unwrap();
    let mut f = Ferry::start(d, &["run", "--no-watch", "p.yaml"]);
    wait_for(&f, "the pipeline", || {
        lines_in(&d.join("out/one.jsonl")) == 10
    });
    fs::write(
        d.join("p.yaml"),
        pipeline("p", "in", "out/one.jsonl", "  batch_size: 500\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        said(&f, "reload: pipeline changed"),
        0,
        "not watching: {}",
        f.log_text()
    );
    f.signal(SIGHUP);
    wait_for(&f, "the reload", || {
        said(&f, "reload: pipeline changed") == 1
    });
    append_test_input(&d.join("in/a.jsonl"), "a", 10, 15);
    wait_for(&f, "records after it", || {
        lines_in(&d.join("out/one.jsonl")) == 15
    });
    f.stop();
    assert_once(&d.join("out/one.jsonl"), "a", 15);
}

/// The user fixing a wrong port must not wait out the retry loop: the
/// changed file replaces the retrying pipeline at once.
#[test]
fn a_retrying_pipeline_takes_its_fixed_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 50);
    let table = format!("reload_fix_{}", fastrand::u32(..));
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
    psql_at(
        &pg_url(),
        &format!("CREATE TABLE {table} (file text, seq bigint, pad text)"),
    );
    let with_url = |url: &str| {
        format!(
            // Named after its table: the offsets table is shared by every
            // test, and positions are stored under the pipeline's name.
            "name: {table}\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: {url}\n  table: {table}\nerrors:\n  retry_backoff: 1m\n  retry_backoff_max: 1m\n"
        )
    };
    let wrong = pg_url().replace(":5432", &format!(":{}", free_port()));
    fs::write(d.join("pg.yaml"), with_url(&wrong)).unwrap();
    let mut f = Ferry::start(d, &["run", "pg.yaml"]);
    wait_for(&f, "the first failure", || {
        f.log_text()
            .contains("starting again from the committed positions")
    });
    fs::write(d.join("pg.yaml"), with_url(&pg_url())).unwrap();
    let count = || {
        psql_at(&pg_url(), &format!("SELECT count(*) FROM {table}"))
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    wait_for(&f, "the rows, well before the next retry", || count() == 50);
    let distinct = psql_at(
        &pg_url(),
        &format!("SELECT count(DISTINCT seq) FROM {table}"),
    );
    assert_eq!(distinct.trim(), "50");
    f.stop();
    psql_at(&pg_url(), &format!("DROP TABLE IF EXISTS {table}"));
}

/// One pipeline's file rewritten every 0.5–2 s, alternating two valid
/// definitions that write the same output, while its input grows; ferry
/// SIGKILLed at 8 random moments and started again: every record once, in
/// order.
#[test]
fn a_reload_storm_with_sigkills_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("conf")).unwrap();
    let definitions = [
        pipeline("storm", "in", "out/storm.jsonl", ""),
        pipeline("storm", "in", "out/storm.jsonl", "  batch_size: 700\n"),
    ];
    fs::write(d.join("conf/storm.yaml"), &definitions[0]).unwrap();
    let total = 40_000u64;
    let writer = {
        let d = d.clone();
        std::thread::spawn(move || {
            let mut written = 0;
            let mut flip = 0;
            let mut next_rewrite = std::time::Instant::now();
            while written < total {
                let n = (written + 200).min(total);
                append_test_input(&d.join("in/a.jsonl"), "a", written, n);
                written = n;
                if std::time::Instant::now() >= next_rewrite {
                    flip = 1 - flip;
                    // Written whole and renamed over, as editors save.
                    fs::write(d.join("conf/.storm.tmp"), &definitions[flip]).unwrap();
                    fs::rename(d.join("conf/.storm.tmp"), d.join("conf/storm.yaml")).unwrap();
                    next_rewrite += Duration::from_millis(fastrand::u64(500..2000));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut reloads = 0;
    for _ in 0..8 {
        let f = Ferry::start(&d, &["run", "conf"]);
        std::thread::sleep(Duration::from_millis(fastrand::u64(800..2500)));
        reloads += said(&f, "reload: pipeline changed");
        let mut f = f;
        f.kill9();
    }
    writer.join().unwrap();
    let f = Ferry::start(&d, &["run", "conf"]);
    let out = d.join("out/storm.jsonl");
    let done = wait_until(Duration::from_secs(60), || lines_in(&out) as u64 >= total);
    reloads += said(&f, "reload: pipeline changed");
    assert!(done, "{} of {total}: {}", lines_in(&out), f.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let mut f = f;
    f.stop();
    assert_once(&out, "a", total);
    assert!(
        reloads >= 3,
        "the storm changed the pipeline only {reloads} times"
    );
    eprintln!("{reloads} reloads applied across 8 SIGKILLs");
}

/// A deploy that swaps the whole folder (`mv cfg.new cfg`), and a pipeline
/// file that is a link whose target is edited: inotify sees neither; the
/// poll behind it does.
#[test]
fn a_swapped_folder_and_an_edited_link_target_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("cfg")).unwrap();
    fs::create_dir_all(d.join("shared")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(d.join("cfg/p.yaml"), pipeline("p", "in", "out/p.jsonl", "")).unwrap();
    fs::write(
        d.join("shared/l.yaml"),
        pipeline("l", "in", "out/l.jsonl", ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("../shared/l.yaml", d.join("cfg/l.yaml")).unwrap();
    let mut f = Ferry::start(d, &["run", "cfg"]);
    wait_for(&f, "both pipelines", || {
        lines_in(&d.join("out/p.jsonl")) == 10 && lines_in(&d.join("out/l.jsonl")) == 10
    });

    // The link's target edited in place.
    let edited = pipeline("l", "in", "out/l.jsonl", "  batch_size: 500\n");
    fs::write(d.join("shared/l.yaml"), edited).unwrap();
    wait_for(&f, "the edited link target", || {
        said(&f, "reload: pipeline changed") == 1
    });

    // The folder swapped for a new one with one more pipeline.
    fs::create_dir_all(d.join("cfg.new")).unwrap();
    fs::write(
        d.join("cfg.new/p.yaml"),
        pipeline("p", "in", "out/p.jsonl", ""),
    )
    .unwrap();
    fs::write(
        d.join("cfg.new/q.yaml"),
        pipeline("q", "in", "out/q.jsonl", ""),
    )
    .unwrap();
    fs::rename(d.join("cfg"), d.join("cfg.old")).unwrap();
    fs::rename(d.join("cfg.new"), d.join("cfg")).unwrap();
    wait_for(&f, "the new folder's pipeline", || {
        lines_in(&d.join("out/q.jsonl")) == 10
    });
    wait_for(
        &f,
        "the link's pipeline removed with the old folder",
        || said(&f, "reload: pipeline removed (its file was removed)") == 1,
    );
    // p is defined alike in both folders: untouched.
    assert_eq!(said(&f, "pipeline=p file"), 1, "{}", f.log_text());
    f.stop();
    assert_once(&d.join("out/p.jsonl"), "a", 10);
    assert_once(&d.join("out/q.jsonl"), "a", 10);
}

/// A sink whose server accepts and never answers holds its pipeline in
/// `starting`: a fixed file still replaces it within seconds (the opening
/// is cut short after a grace), and a stop does not wait for it either.
#[test]
fn a_pipeline_hung_while_opening_takes_its_fixed_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("cfg")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        // Accepts and holds every connection, answering nothing.
        let mut kept = Vec::new();
        for s in silent.incoming().take(4).flatten() {
            kept.push(s);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let hung = format!(
        "name: p\nsource:\n  type: file\n  path: in/*.jsonl\nsink:\n  type: postgres\n  url: postgres://root@127.0.0.1:{port}/test\n  table: t\n"
    );
    fs::write(d.join("cfg/p.yaml"), hung).unwrap();
    let mut f = Ferry::start(d, &["run", "cfg"]);
    wait_for(&f, "the pipeline to start opening", || {
        said(&f, "pipeline added") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    fs::write(d.join("cfg/p.yaml"), pipeline("p", "in", "out/p.jsonl", "")).unwrap();
    wait_for(&f, "the fixed definition", || {
        lines_in(&d.join("out/p.jsonl")) == 10
    });
    assert!(
        f.log_text().contains("the opening is cut short"),
        "{}",
        f.log_text()
    );
    f.stop();
    assert_once(&d.join("out/p.jsonl"), "a", 10);
    drop(held);
}

/// A pipeline file whose read never returns (a FIFO here; a stuck network
/// mount in life) holds up no one: the run still stops on SIGTERM.
#[test]
fn a_reading_that_hangs_does_not_hold_up_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("cfg")).unwrap();
    let fifo = d.join("cfg/stuck.yaml");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path we own.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let mut f = Ferry::start(d, &["run", "cfg/stuck.yaml"]);
    std::thread::sleep(Duration::from_millis(500));
    let asked = std::time::Instant::now();
    f.stop();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{}",
        f.log_text()
    );
}

/// What the probe found at the edges: hidden files are not pipelines, a
/// path named twice is one file, an empty folder is exit 2, and SIGHUP
/// does not end `--once`.
#[test]
fn hidden_files_doubled_paths_empty_folders_and_sighup_with_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("in")).unwrap();
    fs::create_dir_all(d.join("cfg")).unwrap();
    fs::create_dir_all(d.join("empty")).unwrap();
    append_test_input(&d.join("in/a.jsonl"), "a", 0, 10);
    fs::write(d.join("cfg/p.yaml"), pipeline("p", "in", "out/p.jsonl", "")).unwrap();
    // A stale backup and an editor's lock beside it.
    fs::write(
        d.join("cfg/.p.yaml"),
        pipeline("p", "in", "out/old.jsonl", ""),
    )
    .unwrap();
    fs::write(d.join("cfg/.#p.yaml"), "root@host.1234:1700000000").unwrap();

    let (status, log) = run_to_end(d, &["run", "empty"], Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("no pipeline files"), "{log}");

    let mut f = Ferry::start(d, &["run", "cfg", "cfg/p.yaml"]);
    wait_for(&f, "the pipeline", || {
        lines_in(&d.join("out/p.jsonl")) == 10
    });
    let log = f.log_text();
    assert!(!log.contains("refused"), "{log}");
    assert!(
        !log.contains(".p.yaml") && !log.contains(".#p.yaml"),
        "{log}"
    );
    assert!(!d.join("out/old.jsonl").exists());
    f.stop();

    // --once: a SIGHUP is said and ignored; the run ends as usual.
    let slow = "name: g\nsource:\n  type: generate\n  count: 300\n  rate: 200\nsink:\n  type: file\n  path: out/g.jsonl\n";
    fs::write(d.join("g.yaml"), slow).unwrap();
    let mut f = Ferry::start(d, &["run", "--once", "g.yaml"]);
    wait_for(&f, "the generator", || {
        f.log_text().contains("pipeline started")
    });
    f.signal(SIGHUP);
    let status = f.wait_for_exit(Duration::from_secs(20)).expect("ends");
    assert!(status.success(), "{}", f.log_text());
    assert!(f.log_text().contains("SIGHUP ignored"), "{}", f.log_text());
    assert_eq!(lines_in(&d.join("out/g.jsonl")), 300);
}
