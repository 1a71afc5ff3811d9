use super::*;

fn temp(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("orrery-sweep-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn input(dir: &Path, name: &str, lr: &str) -> ReportInput {
    ReportInput {
        name: name.into(),
        dir: dir.join(name),
        swept: vec![("lr".into(), lr.into())],
        note: None,
    }
}

fn run(dir: &Path, name: &str, lines: &[&str]) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("metrics.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
}

#[test]
fn rows_hold_the_last_values_and_the_mean_rate() {
    let dir = temp("rows");
    run(
        &dir,
        "a",
        &[
            r#"{"step":0,"heldout_loss":2.0}"#,
            r#"{"step":2,"loss":1.5,"samples_per_s":10.0}"#,
            r#"{"step":4,"loss":1.25,"samples_per_s":20.0,"heldout_loss":1.0,"heldout_loss_ema":1.1,"context_gain":0.5}"#,
            "{torn",
        ],
    );
    std::fs::write(
        dir.join("a/rollout.json"),
        r#"{"model_error_px": 2.5, "clips": 4, "outputs": ["x.gif"]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let r = Report::collect(&[input(&dir, "a", "0.001"), input(&dir, "b", "0.0003")]).unwrap();
    assert_eq!(
        r.columns,
        [
            "run",
            "lr",
            "step",
            "loss",
            "heldout_loss",
            "heldout_loss_ema",
            "context_gain",
            "action_gain",
            "samples_per_s",
            "clips",
            "model_error_px",
            "note"
        ]
    );
    use Cell::{Empty, Num, Text};
    assert_eq!(
        r.rows[0],
        [
            Text("a".into()),
            Text("0.001".into()),
            Num(4.0),
            Num(1.25),
            Num(1.0),
            Num(1.1),
            Num(0.5),
            Empty,
            Num(15.0),
            Num(4.0),
            Num(2.5),
            Text("1 unreadable line(s) in metrics.jsonl".into()),
        ]
    );
    assert_eq!(r.rows[1][2], Empty);
    assert_eq!(r.rows[1][11], Text("no metrics.jsonl".into()));
    // A file is not a run directory.
    std::fs::write(dir.join("file"), "x").unwrap();
    let e = Report::collect(&[input(&dir, "file", "1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a run directory"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn table(rows: Vec<Vec<Cell>>) -> Report {
    Report {
        columns: vec!["run".into(), "lr".into(), "loss".into()],
        rows,
    }
}

#[test]
fn sorting_puts_blanks_last_and_compares_numbers() {
    use Cell::{Empty, Num, Text};
    let mut r = table(vec![
        vec![Text("a".into()), Text("0.01".into()), Num(2.0)],
        vec![Text("b".into()), Text("0.002".into()), Empty],
        vec![Text("c".into()), Text("0.1".into()), Num(1.0)],
    ]);
    r.sort_by("loss").unwrap();
    let order = |r: &Report| -> Vec<Cell> { r.rows.iter().map(|row| row[0].clone()).collect() };
    assert_eq!(
        order(&r),
        [Text("c".into()), Text("a".into()), Text("b".into())]
    );
    // Swept values sort as numbers, not as text.
    r.sort_by("lr").unwrap();
    assert_eq!(
        order(&r),
        [Text("b".into()), Text("a".into()), Text("c".into())]
    );
    let e = r.sort_by("los").unwrap_err().to_string();
    assert!(
        e.contains("--sort los") && e.contains("run, lr, loss"),
        "{e}"
    );
}

#[test]
fn csv_quotes_what_needs_quotes() {
    use Cell::{Empty, Num, Text};
    let r = table(vec![
        vec![
            Text("a,b".into()),
            Text("say \"hi\"".into()),
            Num(0.123456789),
        ],
        vec![Text("plain".into()), Text(" x".into()), Empty],
    ]);
    assert_eq!(
        r.to_csv(),
        "run,lr,loss\n\"a,b\",\"say \"\"hi\"\"\",0.123456789\nplain,\" x\",\n"
    );
}

#[test]
fn markdown_is_aligned() {
    use Cell::{Empty, Num, Text};
    let r = table(vec![
        vec![
            Text("long-name".into()),
            Text("0.001".into()),
            Num(0.123456),
        ],
        vec![Text("a|b".into()), Text("0.1".into()), Empty],
    ]);
    assert_eq!(
        r.to_markdown(),
        "| run       |    lr |   loss |\n\
         | --------- | ----: | -----: |\n\
         | long-name | 0.001 | 0.1235 |\n\
         | a\\|b      |   0.1 |        |\n"
    );
}
