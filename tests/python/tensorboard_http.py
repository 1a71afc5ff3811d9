"""Start the real TensorBoard server on loopback over a log directory and
read, through its HTTP API (what the browser reads), the runs, some scalar
tags, the image tags and the HParams tab's experiment and session groups.

Usage: python3 tensorboard_http.py LOGDIR TAG [TAG ...]
Prints one JSON object:
  {"runs": [...], "scalars": {run: {tag: [[step, value], ...]}},
   "images": {run: [tag, ...]}, "hparams": [name, ...],
   "metrics": [tag, ...], "sessions": {run: {hparam: value}}}
"""
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    logdir, tags = sys.argv[1], sys.argv[2:]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
         "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return json.loads(r.read())

    def post(path, body):
        req = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), method="POST",
            # TensorBoard refuses POSTs without it (a CSRF guard).
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        # Up, and every run loaded with its last scalars.
        deadline = time.time() + 90
        runs = []
        while time.time() < deadline:
            if server.poll() is not None:
                sys.exit("tensorboard exited: " + server.stderr.read().decode())
            try:
                runs = get("/data/runs")
                loaded = get("/data/plugin/scalars/tags")
                if runs and all(all(t in loaded.get(r, {}) for t in tags) for r in runs
                                if r.endswith("tensorboard")):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        out = {"runs": runs, "scalars": {}, "images": {}}
        for run in runs:
            for tag in tags:
                q = urllib.parse.urlencode({"run": run, "tag": tag})
                try:
                    points = get(f"/data/plugin/scalars/scalars?{q}")
                except OSError:
                    continue
                out["scalars"].setdefault(run, {})[tag] = [[p[1], p[2]] for p in points]
        for run, by_tag in get("/data/plugin/images/tags").items():
            out["images"][run] = sorted(by_tag)
        experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
        out["hparams"] = sorted(h["name"] for h in experiment.get("hparamInfos", []))
        out["metrics"] = sorted(m["name"]["tag"] for m in experiment.get("metricInfos", []))
        groups = post("/data/plugin/hparams/session_groups", {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 100,
        })
        out["sessions"] = {
            s["name"]: dict(g.get("hparams", {}), status=s.get("status"))
            for g in groups.get("sessionGroups", []) for s in g.get("sessions", [])
        }
        print(json.dumps(out))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
