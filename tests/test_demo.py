"""The demo (``make demo`` / ``fusejit demo``): its ``--quick`` path end to end, and the
message a user without the ``demo`` extra gets."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fusejit.__main__ as cli

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "train_digits.py"
MISSING = [pip for module, pip in cli.DEMO_PACKAGES.items() if importlib.util.find_spec(module) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"the demo extra is not installed ({', '.join(MISSING)}): "
                    "pip install -e '.[demo]' (make test installs it)")
def test_quick_demo_trains_dumps_compares_and_plots(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--out", str(out), "--batch-size", "32"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "test accuracy:" in text and "compile time:" in text
    # The IR dump of the train step: every stage, the kernels and the fusion report.
    dump = next((out / "ir_dump").glob("*_train_step"))
    assert f"IR dump of train_step: {dump}" in text
    assert (dump / "00_traced.ir").read_text().startswith("// stage: traced")
    assert any(p.name.endswith("_fused.ir") for p in dump.iterdir())
    assert "fusion report" in (dump / "fusion_report.txt").read_text()
    assert list((dump / "kernels").glob("*.py"))
    # The comparison of one training step: all three variants, results checked.
    table = text[text.index("fj.compare: train_step"):]
    for label in ("NumPy eager", "fusejit unfused", "fusejit fused"):
        assert label in table
    assert table.count(" agree") == 2, table
    # The profile, its trace and the picture.
    assert "profile of @train_step" in text
    json.loads((out / "train_step_trace.json").read_text())["traceEvents"]
    assert (out / "digits_demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_without_the_extra_says_which_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--quick"])
    message = str(exc.value)
    assert "'.[demo]'" in message and "scikit-learn" in message
