"""README's accuracy table quotes the evaluate.py reports committed under models/."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = re.compile(r"(models/[\w.-]+\.eval\.json)")
SOURCES_REPORT = re.compile(r"(models/[\w.-]+\.sources\.json)")


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _rows_naming(report: re.Pattern) -> list[str]:
    """README's table rows that name a report the pattern matches."""
    return [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|") and report.search(line)
    ]


def _shown(measured: dict, *fields: str) -> list[str]:
    """The fields of a report's row as README shows them; ``jpeg:50`` is its perturbation's ROC AUC."""
    return [
        f"{measured['perturbations']['jpeg:50']['roc_auc'] if field == 'jpeg:50' else measured[field]:.3f}"
        for field in fields
    ]


def test_readme_accuracy_rows_match_their_committed_reports():
    rows = _rows_naming(REPORT)
    assert len(rows) >= 2, "README's table should name the shipped model's and the original recipe's reports"
    for row in rows:
        report_path = ROOT / REPORT.search(row).group(1)
        report = json.loads(report_path.read_text())
        shown = _shown(report, "accuracy", "roc_auc", "real_accuracy", "fake_accuracy", "jpeg:50")
        assert _cells(row)[1:6] == shown, report_path.name


def test_readme_per_source_rows_match_their_committed_reports():
    """The per-source table: each row names an evaluate.py report with several --data-dir and a source of it."""
    rows = _rows_naming(SOURCES_REPORT)
    assert len(rows) >= 3, "README should show the shipped model on every shared data set"
    for row in rows:
        report = json.loads((ROOT / SOURCES_REPORT.search(row).group(1)).read_text())
        cells = _cells(row)
        measured = report["pooled"] if cells[1] == "pooled" else report["sources"][cells[1]]
        shown = _shown(measured, "roc_auc", "fake_accuracy", "real_accuracy", "tpr_at_fpr_1", "jpeg:50")
        assert cells[2:7] == shown, row


def _readme_commands() -> list[str]:
    """The two commands README.md starts with (the lines of its first bash block)."""
    block = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command_and_the_install_is_plain_pip():
    serve, test = _readme_commands()
    assert serve.endswith("inference.py") and test.endswith("pytest -q")
    assert test.index("ruff check") < test.index("ruff format --check") < test.index("pytest")  # the linters first
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == test
    for command in (serve, test):
        assert "pip install -r requirements.txt &&" in command and "--no-deps" not in command
    assert "--no-deps" not in (ROOT / "requirements.txt").read_text()
