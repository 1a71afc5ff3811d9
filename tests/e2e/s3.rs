//! Object storage: a real S3-compatible server (moto's, started here) holds
//! the dataset; orrery writes it there, inspects it, and trains from it to
//! the same weights as from a local copy.
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::dist::assert_same_checkpoint;
use super::{ok, python, scratch, user_error, TINY};

/// A moto S3 server on a free port, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (pip install \"moto[server]\", or bash launch/test.sh)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// orrery with S3 credentials and the endpoint in the environment.
fn orrery_s3(moto: &Moto, args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(args)
        .current_dir(cwd)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", moto.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .expect("run orrery")
}

#[test]
fn train_from_s3_equals_train_from_a_local_copy() {
    let moto = Moto::start();
    python(&[
        "-c",
        &format!(
            "import urllib.request; urllib.request.urlopen(urllib.request.Request('{}/orrery-data', method='PUT'))",
            moto.endpoint()
        ),
    ]);
    let dir = scratch("s3");
    // `data synth` of `clips` 6-frame 16x16 clips (10 per file, seed `seed`) to `out`.
    let synth_with = |out: &str, clips: &str, seed: &str| {
        let args = [
            "data",
            "synth",
            "--out",
            out,
            "--clips",
            clips,
            "--frames",
            "6",
            "--size",
            "16",
            "16",
            "--clips-per-file",
            "10",
            "--seed",
            seed,
        ];
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let synth = |out: &str| synth_with(out, "24", "0");
    let args = synth("s3://orrery-data/quick");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(orrery_s3(&moto, &args, &dir));
    assert!(
        out.contains("3 file(s) under s3://orrery-data/quick"),
        "{out}"
    );
    let args = synth("local");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(orrery_s3(&moto, &args, &dir));
    let inspect = ok(orrery_s3(
        &moto,
        &["data", "inspect", "s3://orrery-data/quick"],
        &dir,
    ));
    assert!(inspect.contains("3 file(s), 24 clips"), "{inspect}");

    // The index reads only footers, and its cache is reused while files
    // are unchanged: after one file is rewritten, only it is read again.
    let args = synth("s3://orrery-data/indexed");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(orrery_s3(&moto, &args, &dir));
    let index = || {
        ok(orrery_s3(
            &moto,
            &[
                "data",
                "index",
                "s3://orrery-data/indexed",
                "--cache",
                "index.json",
            ],
            &dir,
        ))
    };
    let first = index();
    assert!(
        first.contains("3 file(s), 3 row groups, 24 rows"),
        "{first}"
    );
    assert!(
        first.contains("row groups [10]") && first.contains("row groups [4]"),
        "{first}"
    );
    assert!(
        first.contains("footers read: 3 file(s)") && first.contains("cache: 0"),
        "{first}"
    );
    let again = index();
    assert!(
        again.contains("footers read: 0 file(s), 0 bytes") && again.contains("cache: 3"),
        "{again}"
    );
    // A dataset is not written over another (the files would mix), unless
    // --overwrite deletes the old files first.
    let args = synth_with("s3://orrery-data/indexed", "7", "9");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    user_error(
        orrery_s3(&moto, &args, &dir),
        "already holds 3 .parquet file(s)",
    );
    let rewrite = synth_with("s3://orrery-data/rewrite", "7", "9");
    let mut rewrite: Vec<&str> = rewrite.iter().map(String::as_str).collect();
    ok(orrery_s3(&moto, &rewrite, &dir));
    user_error(
        orrery_s3(&moto, &rewrite, &dir),
        "add --overwrite to replace them",
    );
    rewrite.push("--overwrite");
    let out = ok(orrery_s3(&moto, &rewrite, &dir));
    assert!(out.contains("replaced the 1 .parquet file(s)"), "{out}");
    // Rewrite one file of the indexed dataset in place (an object PUT).
    python(&[
        "-c",
        &format!(
            "import boto3; boto3.client('s3', endpoint_url='{ep}', aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1').copy_object(Bucket='orrery-data', Key='indexed/part-00000.parquet', CopySource={{'Bucket': 'orrery-data', 'Key': 'rewrite/part-00000.parquet'}})",
            ep = moto.endpoint()
        ),
    ]);
    let third = index();
    assert!(
        third.contains("3 file(s), 3 row groups, 21 rows"),
        "{third}"
    );
    assert!(
        third.contains("footers read: 1 file(s)") && third.contains("cache: 2"),
        "{third}"
    );
    // A file that is not Parquet is named, with what is wrong.
    python(&[
        "-c",
        &format!(
            "import urllib.request; urllib.request.urlopen(urllib.request.Request('{}/orrery-data/indexed/zz.parquet', data=b'PAR1 cut short', method='PUT'))",
            moto.endpoint()
        ),
    ]);
    let err = user_error(
        orrery_s3(&moto, &["data", "index", "s3://orrery-data/indexed"], &dir),
        "zz.parquet",
    );
    // (moto stores this small PUT as an empty object: either check names it.)
    assert!(
        err.contains("magic bytes PAR1") || err.contains("too short for a Parquet file"),
        "{err}"
    );

    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    for (url, run) in [
        ("s3://orrery-data/quick", "from-s3"),
        ("local", "from-local"),
    ] {
        ok(orrery_s3(
            &moto,
            &[
                "train",
                "tiny.toml",
                "--set",
                &format!("data.url=\"{url}\""),
                "--run-dir",
                run,
            ],
            &dir,
        ));
    }
    assert_same_checkpoint(
        &dir.join("from-s3/checkpoints/step_00000006"),
        &dir.join("from-local/checkpoints/step_00000006"),
        "s3 vs local",
    );
    // Streaming row groups with ranged reads: the same rows per step and the
    // same weights from S3 as from the local copy.
    for (url, run) in [
        ("s3://orrery-data/quick", "stream-s3"),
        ("local", "stream-local"),
    ] {
        ok(orrery_s3(
            &moto,
            &[
                "train",
                "tiny.toml",
                "--set",
                &format!("data.url=\"{url}\""),
                "--set",
                "data.streaming=true",
                "--run-dir",
                run,
            ],
            &dir,
        ));
    }
    assert_same_checkpoint(
        &dir.join("stream-s3/checkpoints/step_00000006"),
        &dir.join("stream-local/checkpoints/step_00000006"),
        "streamed s3 vs local",
    );
    let rows = |run: &str| std::fs::read_to_string(dir.join(run).join("samples.jsonl")).unwrap();
    assert_eq!(rows("stream-s3"), rows("stream-local"));
    assert!(
        rows("stream-s3").contains("\"rows\":["),
        "{}",
        rows("stream-s3")
    );
    // Options in the URL query work as well as the environment.
    let query = format!(
        "s3://orrery-data/quick?endpoint={}&allow_http=true",
        moto.endpoint()
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(["data", "inspect", &query])
        .current_dir(&dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(ok(listed).contains("24 clips"));
    // A prefix with no files, and a bad option, say so.
    user_error(
        orrery_s3(
            &moto,
            &["data", "inspect", "s3://orrery-data/nothing-here"],
            &dir,
        ),
        "no .parquet files found",
    );
    user_error(
        orrery_s3(
            &moto,
            &["data", "inspect", "s3://orrery-data/quick?colour=blue"],
            &dir,
        ),
        "unknown storage option \"colour\"",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TCP proxy to `target` that answers the first `fail` connections with
/// HTTP 503 (as an overloaded S3 does) and forwards the rest.
fn flaky_proxy(target: u16, fail: usize) -> u16 {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let left = Arc::new(AtomicUsize::new(fail));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                let mut client = client;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn store_faults_are_retried_or_reported_never_hung() {
    let moto = Moto::start();
    python(&[
        "-c",
        &format!(
            "import urllib.request; urllib.request.urlopen(urllib.request.Request('{}/faults', method='PUT'))",
            moto.endpoint()
        ),
    ]);
    let dir = scratch("s3-faults");
    ok(orrery_s3(
        &moto,
        &[
            "data",
            "synth",
            "--out",
            "s3://faults/d",
            "--clips",
            "8",
            "--frames",
            "4",
            "--size",
            "16",
            "16",
        ],
        &dir,
    ));
    // A missing object.
    user_error(
        orrery_s3(
            &moto,
            &["data", "inspect", "s3://faults/d/part-09999.parquet"],
            &dir,
        ),
        "not found",
    );
    // Three 503s, then the real server: retried (and logged), then read.
    let proxy = flaky_proxy(moto.port, 3);
    let url = format!("s3://faults/d?endpoint=http://127.0.0.1:{proxy}");
    let out = orrery_s3(&moto, &["data", "inspect", &url], &dir);
    let se = String::from_utf8_lossy(&out.stderr).to_string();
    let so = ok(out);
    assert!(so.contains("8 clips"), "{so}");
    assert!(
        se.contains("object_store") && se.contains("503") && se.contains("retry 3 of 10"),
        "retries not logged:\n{se}"
    );
    // The streaming loader (footers, then ranged row-group reads) through
    // the same faults: retried, then every clip read.
    let proxy = flaky_proxy(moto.port, 3);
    let url = format!("s3://faults/d?endpoint=http://127.0.0.1:{proxy}");
    let stream = |url: &str| {
        let args = [
            "bench", "data", url, "--stream", "--batch", "4", "--frames", "4", "--repeat", "1",
        ];
        orrery_s3(&moto, &args, &dir)
    };
    let out = stream(&url);
    let se = String::from_utf8_lossy(&out.stderr).to_string();
    let so = ok(out);
    assert!(
        so.contains("row groups read / requests for them / clips taken | 1 / 1 / 8 |"),
        "{so}"
    );
    assert!(
        se.contains("503") && se.contains("retry"),
        "streaming retries not logged:\n{se}"
    );
    // A server that is gone: an error naming the URL within the retry budget.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("s3://faults/d?endpoint=http://127.0.0.1:{dead}&retries=2&retry_timeout_s=3");
    let start = Instant::now();
    user_error(
        orrery_s3(&moto, &["data", "inspect", &url], &dir),
        "object store error at s3://faults/d",
    );
    user_error(stream(&url), "object store error at s3://faults/d");
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The two store mistakes a user makes first get one sentence saying what
/// to change: no credentials, and an http endpoint without allow_http.
#[test]
fn missing_credentials_and_plain_http_say_what_to_change() {
    let dir = super::scratch("s3msg");
    let run = |url: &str, creds: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orrery"));
        cmd.args(["data", "inspect", url]).current_dir(&dir);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        if creds {
            cmd.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing");
        }
        // The instance metadata service, where the SDK looks last for
        // credentials, is a closed local port here: refused at once.
        cmd.env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_REGION", "us-east-1");
        cmd.output().unwrap()
    };
    let e = super::user_error(
        run(
            "s3://bucket/data?endpoint=http://127.0.0.1:9&allow_http=true&retries=0",
            false,
        ),
        "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    );
    assert!(e.lines().count() <= 3, "one message, not a chain:\n{e}");
    let e = super::user_error(
        run(
            "s3://bucket/data?endpoint=http://127.0.0.1:9&retries=0",
            true,
        ),
        "add allow_http=true to the URL query",
    );
    assert!(e.lines().count() <= 3, "one message, not a chain:\n{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
