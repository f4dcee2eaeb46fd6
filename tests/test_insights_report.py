"""report.html and insights.json: contents, partial data, `imgcls report`, and the page in headless Chromium."""
from __future__ import annotations

import html
import json
import logging
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from datasets import AWKWARD_CLASS_NAMES
from imgcls.insights import report
from imgcls.insights.records import RAW_DIR
from imgcls.insights.report import write_report
from imgcls.insights.rules import RULES
from test_insights_rules import healthy_records, write_raw

TOP_OPS = [{"name": "aten::convolution_backward", "self_cpu_us": 1.2e6, "self_cuda_us": 0.0, "calls": 60, "share": 0.41},
           {"name": "aten::mkldnn_convolution", "self_cpu_us": 8.1e5, "self_cuda_us": 0.0, "calls": 60, "share": 0.27}]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Resources(HTMLParser):
    """Every URL-bearing attribute, and the tags that could load something."""

    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, name, value or "") for name, value in attrs if name in ("src", "href", "srcset", "data", "poster", "action")]


def _resources(page: str) -> _Resources:
    parser = _Resources()
    parser.feed(page)
    return parser


@pytest.fixture
def job_dir(tmp_path) -> Path:
    rec = healthy_records()
    for s in rec.steps:  # a few stalls waiting for data, so the outlier parts of the report are drawn
        if s["step"] in (30, 50, 70, 90):
            s["data"] += 0.4
            s["total"] += 0.4
    return write_raw(rec, tmp_path / "data", top_ops=TOP_OPS)


def test_report_sections_and_json(job_dir):
    html_path, json_path = write_report(job_dir)
    page, facts = html_path.read_text(), json.loads(json_path.read_text())
    for title in ("Job summary", "Rules", "Step durations", "Loss and accuracy", "Gradients", "System utilisation",
                  "Data pipeline", "Top operators"):
        assert f">{title}" in page, title
    # every rule, with its verdict and parameters, in both files
    assert [r["rule"] for r in facts["rules"]] == list(RULES)
    for rule in facts["rules"]:
        assert {"rule", "triggered", "parameters", "count", "steps", "message", "recommendation"} <= set(rule)
        assert rule["rule"] in page
    by_name = {r["rule"]: r for r in facts["rules"]}
    assert by_name["StepOutlier"]["count"] == 4 and by_name["StepOutlier"]["parameters"]["stddev"] == 3
    assert set(facts["step_duration"]) >= {"min", "p50", "p95", "p99", "max", "outliers_robust"}
    assert sorted(facts["step_duration"]["outliers_robust"]) == [30, 50, 70, 90]
    assert set(facts["step_duration"]["outlier_cause"].values()) == {"data"}
    assert facts["step_duration"]["min"] <= facts["step_duration"]["p50"] <= facts["step_duration"]["p99"] <= facts["step_duration"]["max"]
    assert facts["verdict"]["headline"] and facts["job"]["status"] == "completed"
    assert facts["trace"].endswith("profiler/trace.json") and "insights/raw/profiler/trace.json" in page
    assert "aten::convolution_backward" in page


def test_report_is_self_contained(job_dir):
    page = write_report(job_dir)[0].read_text()
    found = _resources(page)
    images = [u for tag, name, u in found.urls if tag == "img"]
    assert len(images) >= 8 and all(u.startswith("data:image/png;base64,") for u in images)
    external = [u for _, _, u in found.urls if not u.startswith(("data:", "#"))]
    assert external == []
    assert not {"script", "link", "iframe", "object", "embed"} & set(found.tags)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page) and "@import" not in page


def test_stopped_job_gives_partial_report(tmp_path):
    """Killed after a few steps: only the first files exist, the last line torn."""
    rec = healthy_records()
    out = tmp_path / "data"
    raw = out / RAW_DIR
    raw.mkdir(parents=True)
    (raw / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rec.steps[:25]) + '{"epoch": 1, "st')
    (raw / "timeline.json").write_text(json.dumps(rec.timeline[:8] + [{"event": "end", "t": 9.0, "status": "stopped",
                                                                        "reason": "stopped by signal at epoch 1 step 25/40"}]))
    html_path, json_path = write_report(out)
    facts = json.loads(json_path.read_text())
    assert facts["job"]["status"] == "stopped" and "layers.jsonl" in facts["missing"] and "history.json" in facts["missing"]
    assert facts["step_duration"]["n"] == 20  # 25 steps, 5 of warm-up
    assert "section_errors" not in facts
    page = html_path.read_text()
    assert "stopped by signal" in page and "No gradient statistics" not in page  # global norms exist
    assert "No system samples were recorded" in page and "Not recorded" in page


def test_empty_dir_report(tmp_path):
    (tmp_path / RAW_DIR).mkdir(parents=True)
    _, json_path = write_report(tmp_path)
    facts = json.loads(json_path.read_text())
    assert not any(r["triggered"] for r in facts["rules"]) and "section_errors" not in facts


def test_imgcls_report_rerenders_with_overrides(job_dir):
    cmd = [sys.executable, "-m", "imgcls", "report", str(job_dir.parent), "StepOutlier_n_outliers=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "StepOutlier:" in proc.stdout and str(job_dir / "report.html") in proc.stdout
    rule = {r["rule"]: r for r in json.loads((job_dir / "insights.json").read_text())["rules"]}["StepOutlier"]
    assert rule["triggered"] and rule["parameters"]["n_outliers"] == 2
    bad = subprocess.run([sys.executable, "-m", "imgcls", "report", str(job_dir), "StepOutlier_n_outlier=2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean StepOutlier_n_outliers" in bad.stderr


def test_class_names_are_drawn_and_listed_as_typed(tmp_path, caplog):
    rec = healthy_records()
    n = len(AWKWARD_CLASS_NAMES)
    rec.dataset = {"class_names": AWKWARD_CLASS_NAMES, "counts": {"train": [60] * n, "valid": [8] * n, "test": [8] * n}}
    with caplog.at_level(logging.WARNING):
        html_path, json_path = write_report(write_raw(rec, tmp_path / "data"))
    assert "section_errors" not in json.loads(json_path.read_text())
    assert "could not draw" not in caplog.text
    page = html_path.read_text()
    for name in AWKWARD_CLASS_NAMES:
        assert html.escape(name) in page, name
    assert "<b>&amp; co" not in page


def _planted(*args, **kwargs):
    raise RuntimeError("planted\nover two lines " + "x" * 5000)


def test_a_section_that_fails_is_named_in_the_report_and_logged_once(job_dir, monkeypatch, caplog):
    monkeypatch.setattr(report, "_timeline_chart", _planted)
    with caplog.at_level(logging.WARNING):
        html_path, json_path = write_report(job_dir)
    page, facts = html_path.read_text(), json.loads(json_path.read_text())
    assert "could not draw Job summary: RuntimeError: planted over two lines xxx" in page
    assert "x" * 1000 not in page and len(facts["section_errors"]["summary"]) < 400
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith("could not draw Job summary: RuntimeError: planted over") and "\n" not in notes[0]
    assert ">Gradients" in page and "data:image/png;base64," in page  # the other sections are drawn


def test_a_chart_that_fails_to_render_costs_only_that_chart(job_dir, monkeypatch, caplog):
    def unrenderable(*args):
        fig = Figure()
        fig.text(0.5, 0.5, "$a^$")  # raw mathtext that does not parse: fails when the figure is drawn
        return fig

    monkeypatch.setattr(report, "_timeline_chart", unrenderable)
    with caplog.at_level(logging.WARNING):
        html_path, _ = write_report(job_dir)
    page = html_path.read_text()
    assert "could not draw job timeline: ValueError" in page
    assert "Job duration" in page  # the summary section around the chart is kept
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["could not draw job timeline"]


def _chromium(page: Path, out: Path) -> tuple[Path, list[str]]:
    """Screenshot of the page with DNS answering NOTFOUND; the URLs the page itself requested (net log)."""
    shot, netlog = out / "shot.png", out / "netlog.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={out / 'profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}", "--window-size=1280,9000",
           f"--screenshot={shot}", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    # Chromium's own background requests (updates, time) carry no page; the page's carry its file:// site.
    urls = [e["params"]["url"] for e in log["events"] if names.get(e["type"]) == "URL_REQUEST_START_JOB"
            and "file://" in str(e.get("params", {}).get("network_isolation_key", ""))]
    return shot, urls


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_report_renders_offline_in_chromium(job_dir, tmp_path):
    # The detector works: a page with remote resources is caught.
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="https://cdn.example.org/x.png"><p>control</p></body></html>')
    _, control_urls = _chromium(control, tmp_path / "c")
    assert control_urls == ["https://cdn.example.org/x.png"]

    html_path, _ = write_report(job_dir)
    shot, urls = _chromium(html_path, tmp_path / "r")
    assert urls == []
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (9000, 1280)
    assert (image.sum(axis=2) < 740).mean() > 0.03, "the page looks blank"
    # The charts were decoded and drawn: the same page without its images has hardly any colour.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", html_path.read_text()))
    bare_shot, _ = _chromium(bare, tmp_path / "b")

    def coloured(path):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())

    assert coloured(shot) > 5 * coloured(bare_shot) + 50_000, (coloured(shot), coloured(bare_shot))
