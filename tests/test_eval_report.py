"""The evaluation subsystem: the same numbers as the evaluators it replaced, one report schema for every modality,
version-1 reports still readable, skipped inputs recorded."""

from __future__ import annotations

import json
import os

import eval_parity
import pytest

from tokenizers_mm.cli import main
from tokenizers_mm.eval.report import FORMAT, VERSION, ReportError, format_table, read_report, upgrade

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "eval_golden")
KINDS = ("image", "shape", "speech")


def _golden(kind: str) -> dict:
    with open(os.path.join(GOLDEN, f"{kind}.json")) as f:
        return json.load(f)


def _numbers(report: dict) -> dict:
    """What must not change: per row the budget, its size, metrics and baselines; the baselines tied to no
    budget; the baseline curves (timings left out)."""
    def baseline(b: dict) -> dict:
        return {k: v for k, v in b.items()}

    rows = [{"value": r["value"], "tokens": r["tokens"], "nominal_bytes": r["nominal_bytes"], "kbps": r.get("kbps"),
             "metrics": r["metrics"], "baselines": [baseline(b) for b in r["baselines"]]} for r in report["rows"]]
    return {"rows": rows, "baseline_rows": report["baselines"].get("rows", []),
            "curves": report["baselines"].get("curves", {}), "count": report["samples"]["count"],
            "metrics": [m["key"] for m in report["metrics"]]}


@pytest.fixture(scope="module")
def new_reports(embedded, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    return {kind: eval_parity.evaluate(kind, embedded, root) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_same_numbers_as_the_evaluators_it_replaced(new_reports, kind):
    """Seeded checkpoints, the same evaluation settings: every number of the version-1 report (written by the
    per-modality evaluators before the refactor) comes out again, in the one schema."""
    new = json.load(open(os.path.join(new_reports[kind], "report.json")))
    assert new["format"] == FORMAT and new["format_version"] == VERSION and new["modality"] == kind
    old = upgrade(_golden(kind))
    assert _numbers(new) == _numbers(old)
    assert new["skipped"] == [] and new["timing"]["evaluate_seconds"] > 0
    for name in new["pictures"]:
        assert os.path.getsize(os.path.join(new_reports[kind], name)) > 1000


def test_one_schema_for_every_modality(new_reports):
    """Every report has the same top-level entries and row entries, so readers never branch on the modality."""
    reports = [json.load(open(os.path.join(new_reports[k], "report.json"))) for k in KINDS]
    assert len({tuple(sorted(r)) for r in reports}) == 1
    for r in reports:
        for row in r["rows"]:
            assert {"budget", "value", "tokens", "nominal_bytes", "metrics", "baselines"} <= set(row)
            assert row["budget"] == r["budget"]["name"]
        table = format_table(r)
        assert table.count("| ours |") == len(r["rows"])


def test_old_reports_convert_and_export_reads_them(new_reports, embedded, tmp_path):
    """export --report of a version-1 report.json: converted, the model card shows its table; a JSON file that is
    no report is refused in one line naming it."""
    old = tmp_path / "old_report.json"
    old.write_text(json.dumps(_golden("speech")))
    ckpt = eval_parity.write_checkpoint("speech", str(tmp_path / "speech.ckpt"))
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "export"), "--report", str(old)]) == 0
    cfg = json.load(open(tmp_path / "export" / "config.json"))
    assert cfg["evaluation"]["format"] == FORMAT and cfg["evaluation"]["converted_from"] == "version 1"
    assert [r["kbps"] for r in cfg["evaluation"]["rows"]] == [0.1, 0.2, 0.3]
    card = open(tmp_path / "export" / "README.md").read()
    assert "| ours | 3 | 150 | 0.30 | 5.070 |" in card and "| opus | target 6 |" in card
    bad = tmp_path / "tokens_report.json"
    bad.write_text(json.dumps({"samples": 3, "unigram_entropy_bits": 2.0}))
    with pytest.raises(ReportError, match="tokens_report.json.*not a report"):
        read_report(str(bad))
    assert main(["export", "--ckpt", ckpt, "--out", str(tmp_path / "e2"), "--report", str(bad)]) == 2
    assert not os.path.exists(tmp_path / "e2")


def test_image_report_records_skipped_corrupt_samples(embedded, tmp_path, capsys):
    """A corrupt sample among readable ones is left out and named in the report (key, shard, reason)."""
    import shutil

    import webdataset as wds

    data = tmp_path / "data"
    data.mkdir()
    src = os.path.join(embedded, "image")
    shard = sorted(f for f in os.listdir(src) if f.startswith("val-"))[0]
    with wds.TarWriter(str(data / "val-000000.tar")) as w:
        for i, sample in enumerate(wds.WebDataset(os.path.join(src, shard), shardshuffle=False)):
            if i == 3:
                break
            w.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})
        w.write({"__key__": "broken", "png": b"not a png"})
    shutil.copy(os.path.join(src, "dataset.json"), data / "dataset.json") if os.path.exists(
        os.path.join(src, "dataset.json")) else None
    ckpt = eval_parity.write_checkpoint("image", str(tmp_path / "image.ckpt"))
    out = tmp_path / "report"
    assert main(["evaluate", "--ckpt", ckpt, "--data", str(data / "val-000000.tar"), "--out", str(out),
                 "--no-baselines"]) == 0
    report = json.load(open(out / "report.json"))
    assert report["samples"]["count"] == 3
    (skip,) = report["skipped"]
    assert skip["key"] == "broken" and skip["shard"].endswith("val-000000.tar") and skip["reason"]
    assert "skipped 1 unreadable input" in capsys.readouterr().out
