"""``python -m torch_rln``, the README's demonstration command."""

import re

from torch_rln.__main__ import main


def test_demo_runs_and_reports_both_models(capsys):
    assert main(["--epochs", "3", "--noise", "40"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(RMSprop|RLN\(.*?\))\s+(\d+\.\d+)\s+(\d+\.\d)%\s+(\d+\.\d)%", out, re.M)
    assert [r[0].split("(")[0] for r in rows] == ["RMSprop", "RLN"]
    assert all(float(r[1]) > 0 for r in rows)
