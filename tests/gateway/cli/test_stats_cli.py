"""`coopgate stats` on an embedded telemetry store written as the gateway writes it: the
consent denials a compliance officer reads, whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.settings import Settings
from gateway.telemetry import LocalTelemetry

#: Longer than any column of a table at 80 columns could show whole.
LONG_CATEGORY = "network-quality-measurements-per-radio-cell"
REASON = "consent-withdrawn-by-the-customer"


def _denials(data_dir: Path, counts: list[tuple[str, str, str, int]]) -> None:
    store = LocalTelemetry(Settings(data_dir=data_dir).telemetry_db)
    now = time.time_ns()
    store.write_points(
        [
            (
                now,
                "coopgate.consent.denials",
                "{denial}",
                "counter",
                json.dumps(
                    {
                        "coopgate.category": category,
                        "coopgate.purpose": purpose,
                        "coopgate.reason": reason,
                    },
                    sort_keys=True,
                ),
                None,
                None,
                None,
                None,
                float(count),
            )
            for category, purpose, reason, count in counts
        ]
    )
    store.close()


def test_stats_shows_each_denial_whole_most_first(tmp_path: Path) -> None:
    _denials(
        tmp_path,
        [
            ("location", "incident-diagnosis", "no-consent", 1),
            (LONG_CATEGORY, "incident-diagnosis", REASON, 3),
        ],
    )
    shown = CliRunner().invoke(app, ["stats", "--since", "1h", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    denials = shown.output.split("consent denials", 1)[1]
    # Each name on one line, uncut, and the larger count first.
    assert any(LONG_CATEGORY in line for line in denials.splitlines())
    assert any(REASON in line for line in denials.splitlines())
    assert denials.index(LONG_CATEGORY) < denials.index("location")
    assert "3" in denials[denials.index(LONG_CATEGORY) : denials.index("location")]


def test_stats_says_when_nothing_was_denied(tmp_path: Path) -> None:
    _denials(tmp_path, [])
    shown = CliRunner().invoke(app, ["stats", "--since", "1h", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.rstrip().endswith("consent denials\nnone")
