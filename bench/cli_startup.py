"""How long commands that need no model take, side by side with what every command paid before they
stopped importing the training code (`import imgcls.train`: torch, torchvision, matplotlib).
Goal: under 1 s, and torch never imported.

    uv run python bench/cli_startup.py            # 5 runs each: median wall and CPU seconds
    uv run python bench/cli_startup.py --runs 10

`imgcls aws status` runs against moto's server on 127.0.0.1 (started here, dummy credentials), so its
time includes importing boto3, creating a client and one real HTTP round trip.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgcls:bench"
ROLE = "arn:aws:iam::123456789012:role/bench"
DRY = ["--image-uri", IMAGE, "--role", ROLE, "--train", "s3://b/dogs/train/", "--output-path", "s3://b/out/", "--dry-run"]
COMMANDS = [
    ("imgcls --help", ["--help"]),
    ("imgcls aws --help", ["aws", "--help"]),
    ("imgcls tune --help", ["tune", "--help"]),
    ("imgcls aws train --dry-run", ["aws", "train", *DRY]),
    ("imgcls aws tune --dry-run", ["aws", "tune", *DRY]),
    ("imgcls aws status JOB (moto)", ["aws", "status", "bench-job"]),
]
BASELINE = ("import imgcls.train (before: every command)", None)
PROBE = ("import sys\nfrom imgcls.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         "sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))\nsys.exit(rc or 0)\n")


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from docker_helpers import free_port
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],  # noqa: S603 - the dev env's moto_server
                               stdout=open(workdir / "moto.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)  # noqa: S310 - http://127.0.0.1, the moto server started above
            return process, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2 if os.environ.get("BENCH_SHORT") == "1" else 5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        moto, url = start_moto(Path(tmp))
        try:
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_ENDPOINT_URL": url,
                   "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": f"{tmp}/none", "AWS_SHARED_CREDENTIALS_FILE": f"{tmp}/none"}
            import boto3
            dummy_key = "bench"  # the local moto server takes any key
            boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id=dummy_key,
                         aws_secret_access_key=dummy_key).create_training_job(
                TrainingJobName="bench-job", AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"}, RoleArn=ROLE,
                OutputDataConfig={"S3OutputPath": "s3://b/out/"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
                ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5})
            rows = []
            for label, argv in [*COMMANDS, BASELINE]:
                times, cpu, torch = [], [], None
                cmd = [sys.executable, "-c", PROBE, *argv] if argv is not None else \
                    [sys.executable, "-c", "import sys, imgcls.train; sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))"]
                for i in range(args.runs):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    started = time.perf_counter()
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)  # noqa: S603 - our own commands, timed
                    times.append(time.perf_counter() - started)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                    if proc.returncode != 0:
                        raise SystemExit(f"{label} failed:\n{proc.stderr[-2000:]}")
                    torch = "TORCH=True" in proc.stderr
                    print(f"  {label}: run {i + 1}/{args.runs} {times[-1]:.2f} s", file=sys.stderr, flush=True)
                rows.append((label, statistics.median(times), max(times), statistics.median(cpu), torch))
        finally:
            moto.terminate()
            moto.wait()
    baseline = rows[-1][1]
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| command | median wall s | max wall s | median CPU s | imports torch | before / this |\n|---|---:|---:|---:|---|---:|")
    for label, median, worst, cpu, torch in rows:
        print(f"| `{label}` | {median:.2f} | {worst:.2f} | {cpu:.2f} | {'yes' if torch else 'no'} | {baseline / median:.0f}x |")
    fast = rows[:-1]
    slow = [label for label, median, _, _, torch in fast if median >= 1 or torch]
    print(f"\ngoal (under 1 s, no torch): {'met by all' if not slow else 'not met by ' + ', '.join(slow)}")
    write_ratios("cli_startup", "commands that need no model: median wall seconds (no torch import)",
                 [(f"`{label}` s", median, "< 1 s, no torch" + ("" if not torch else "; IMPORTS TORCH")) for label, median, _, _, torch in fast])


if __name__ == "__main__":
    main()
