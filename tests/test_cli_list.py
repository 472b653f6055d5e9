"""``facecoreset list`` and the CLI's error handling."""

from __future__ import annotations

from facecoreset_plugin.cli import main


def test_list_prints_every_kind_with_distribution(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for header in ("aggregators (facecoreset.aggregators):", "backbones (facecoreset.backbones):",
                   "protocols (facecoreset.protocols):"):
        assert header in out
    line = next(l for l in out.splitlines() if l.strip().startswith("quality_weighted "))
    assert "facecoreset 0.1.0" in line and "aggregators.pooling:QualityWeightedAggregator" in line


def test_list_check_imports_and_reports_ok(capsys):
    assert main(["list", "--kind", "aggregators", "--check"]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "ok" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
