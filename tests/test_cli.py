"""The `csaf` command: demo and bench in a real subprocess, argument errors, the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csaf_events import CsafError
from csaf_events.ops import cli

REPO = Path(__file__).resolve().parent.parent


def csaf(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "csaf_events.ops.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_runs_and_prints_the_summary():
    r = csaf("demo", "--seconds", "2", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for label in ("sessions", "messages delivered", "ops/s", "p99 latency", "data dir"):
        assert label in out, out
    assert "(temporary, removed)" in out
    data_dir = out.split("data dir", 1)[1].split("(temporary")[0].strip()
    assert data_dir and not Path(data_dir).exists()
    delivered = int(out.split("messages delivered", 1)[1].split()[0].replace(",", ""))
    assert delivered > 0 and delivered % 20 == 0
    assert "errors" not in out


def test_demo_keeps_a_given_data_dir(tmp_path):
    r = csaf("demo", "--seconds", "1", "--sessions", "5", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path / 'd'} (kept)" in r.stdout
    assert any((tmp_path / "d").rglob("*"))
    assert "sessions            5 " in r.stdout


def test_installed_console_script():
    script = Path(sys.executable).parent / "csaf"
    assert script.exists(), (f"no csaf console script next to {sys.executable}: install the package with "
                             f"pip (the README's commands do) so the `csaf` entry point exists")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "demo" in r.stdout and "bench" in r.stdout


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: COMMAND"),
    (("nosuch",), "invalid choice: 'nosuch'"),
    (("demo", "--seconds", "0"), "argument --seconds: must be a positive number, got '0'"),
    (("demo", "--seconds", "soon"), "argument --seconds: must be a positive number, got 'soon'"),
    (("demo", "--sessions", "-3"), "argument --sessions: must be a positive integer, got '-3'"),
    (("demo", "--bogus"), "unrecognized arguments: --bogus"),
    (("bench", "--backend", "redis"), "argument --backend: invalid choice: 'redis'"),  # python -m bench's answer
    (("bench", "--payload", "8"), "argument --payload: must be at least 16 bytes, got '8'"),
    (("bench", "--warmup", "-1"), "argument --warmup: must be 0 or more seconds, got '-1'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    r = csaf(*args, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (("bench", "--backend", "kafka"), "--backend kafka needs --bootstrap HOST:PORT"),
    (("bench", "--nodes", "3"), "the embedded backend is a single node"),
])
def test_impossible_bench_setups_exit_1(args, message):
    r = csaf(*args, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("python -m bench: error: ") and message in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_writes_the_json_report(tmp_path):
    out = tmp_path / "report.json"
    r = csaf("bench", "--sessions", "20", "--concurrency", "4", "--payload", "256", "--json", str(out),
             "--warmup", "0.5", "--no-progress", timeout=180)
    assert r.returncode == 0, r.stderr
    assert "lifecycles/s" in r.stdout and "ratio (ours / floor)" in r.stdout
    report = json.loads(out.read_text())
    for key in ("lifecycles_per_s", "ops_per_s", "latency_ms", "peak_rss_bytes", "disk_bytes_per_message",
                "floor", "machine", "versions"):
        assert key in report, key
    assert report["workload"]["lifecycles"] == 20 * 20  # the warm-up's sessions are not counted
    assert report["warmup"]["seconds"] == 0.5 and report["warmup"]["sessions"] >= 1
    assert report["warmup"]["errors"] == 0
    assert "after a warm-up of 0.5 s" in r.stdout
    assert report["errors"] == {}
    assert report["floor"]["ops"] == report["workload"]["ops"]  # the floor does the same operations
    assert report["floor"]["ratio"] > 0
    assert set(report["latency_ms"]["store_message_in_outbox"]) == {"p50", "p99", "max"}
    assert report["machine"]["cores"] >= 1 and report["versions"]["rocksdict"]
    assert report["cpu_cost"]["node_ms_per_call"] > 0


@pytest.mark.parametrize("module", ["bench", "bench.lifecycle"])
def test_bench_module_runs_from_the_repository_root(module):
    r = subprocess.run([sys.executable, "-m", module, "--sessions", "5", "--concurrency", "2",
                        "--no-floor", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "backend embedded" in r.stdout


def test_csaf_bench_runs_the_checkouts_benchmark_from_anywhere(tmp_path):
    """From an editable install, the checkout the package lives in; its help is the benchmark's."""
    r = csaf("bench", "--help", cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m bench") and "--takeover-events" in r.stdout


def test_the_library_imports_no_tool():
    """Nothing of bench/ is imported by the package, and nothing is put on the import path."""
    code = ("import sys, csaf_events.ops.cli, csaf_events.store; before = list(sys.path); "
            "csaf_events.ops.cli.build_parser(); assert sys.path == before; "
            "assert not [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_bench_without_a_checkout_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "csaf_events" / "ops" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CsafError, match="csaf bench runs the benchmark of a csaf-events source checkout"):
        cli.checkout("bench")
    with pytest.raises(CsafError, match="csaf demo runs the benchmark of a csaf-events source checkout"):
        cli.checkout("demo")


def test_subcommand_registry_is_the_extension_point(capsys):
    names = [c.name for c in cli.SUBCOMMANDS if isinstance(c, cli.Subcommand)]
    assert names[:2] == ["demo", "bench"]
    parsed = cli.build_parser().parse_args(["audit", "--data-dir", "x"])  # the log tools' group row
    assert parsed.command == "audit"
    seen = {}

    def add(p):
        p.add_argument("--n", type=cli.positive_int, default=1)

    def run(args):
        seen["n"] = args.n
        return 7

    extra = (*cli.SUBCOMMANDS, cli.Subcommand("echo", "test only", add, run))
    args = cli.build_parser(extra).parse_args(["echo", "--n", "3"])
    assert args.run(args) == 7 and seen == {"n": 3}


def test_library_errors_become_one_line(capsys):
    def boom():
        raise CsafError("the store is closed")

    assert cli.run_main(boom) == 1
    assert capsys.readouterr().err == "csaf: error: the store is closed\n"


def test_subcommand_groups_register_several_commands():
    def register(sub):
        for name in ("one", "two"):
            p = sub.add_parser(name)
            p.set_defaults(run=lambda args, name=name: len(name))

    parser = cli.build_parser((*cli.SUBCOMMANDS, cli.SubcommandGroup(register)))
    args = parser.parse_args(["two"])
    assert args.run(args) == 3
    assert parser.parse_args(["demo"]).run is cli._demo
