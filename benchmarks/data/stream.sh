#!/usr/bin/env bash
# The streaming loader next to the whole-file reader and pyarrow, from local
# disk and from moto's S3 server, in one run (BENCHMARKS.md, "Streaming").
#   benchmarks/data/stream.sh BIN DIR...   (each DIR a local Parquet dataset)
set -euo pipefail
bin=$1; shift
port=$((20000 + RANDOM % 20000))
moto_server -H 127.0.0.1 -p $port > /tmp/moto-bench.log 2>&1 &
moto=$!
trap 'kill $moto' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
for _ in $(seq 50); do curl -s "$AWS_ENDPOINT" > /dev/null && break; sleep 0.2; done
python3 - "$@" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT"])
s3.create_bucket(Bucket="bench")
for d in sys.argv[1:]:
    name = os.path.basename(os.path.realpath(d))
    for f in sorted(os.listdir(d)):
        if f.endswith(".parquet"):
            s3.upload_file(os.path.join(d, f), "bench", f"{name}/{f}")
PY
clips() { grep -E '^\| clips/s' | tr -d '| ' | sed 's/clips\/s//'; }
echo "| dataset | source | whole-file reader clips/s | streaming loader clips/s | pyarrow clips/s | streaming / whole | streaming / pyarrow |"
echo "|---|---|---|---|---|---|---|"
for d in "$@"; do
  name=$(basename "$(realpath "$d")")
  for src in "$d" "s3://bench/$name"; do
    whole=$("$bin" bench data "$src" --repeat 5 | clips)
    stream=$("$bin" bench data "$src" --repeat 5 --stream --frames 1 | clips)
    pa=$(python3 "$(dirname "$0")/pyarrow_read.py" "$src" --repeat 5 | clips)
    where=local; [[ $src == s3://* ]] && where="S3 (moto)"
    python3 -c "print(f'| $name | $where | $whole | $stream | $pa | {$stream/$whole:.2f} | {$stream/$pa:.2f} |')"
  done
done
