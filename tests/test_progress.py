"""Progress bars on stderr (training.progress): shown on a terminal, hidden on a pipe or with --quiet,
forced by ROUTER_ML_PROGRESS; the JSON on stdout parses in every case."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from training.data import load_traffic, write_jsonl
from training.featurizers import featurize_part, get_featurizer
from training.progress import PROGRESS_ENV, bar, chunks, progress_allowed, progress_scope, scoped_by_progress_flag

from .conftest import DEMO, ROOT


def _drawn(monkeypatch, env: str | None, *, enabled: bool = True, scope: bool = True) -> str:
    """What one bar writes to a non-terminal stream under these settings."""
    if env is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(PROGRESS_ENV, env)
    out = io.StringIO()
    with progress_scope(scope), bar(total=3, desc="work", unit="step", enabled=enabled, file=out) as b:
        b.update(3)
    return out.getvalue()


def test_bars_follow_the_terminal_the_environment_and_the_quiet_flag(monkeypatch):
    assert _drawn(monkeypatch, None) == ""                      # not a terminal: tqdm's own rule
    assert "work: 100%" in _drawn(monkeypatch, "1")             # forced on a pipe or log file
    assert _drawn(monkeypatch, "1", scope=False) == ""          # --quiet wins over the variable
    assert _drawn(monkeypatch, "1", enabled=False) == ""        # progress=False at the call
    assert _drawn(monkeypatch, "0") == ""


def test_scopes_only_narrow_and_a_function_follows_its_progress_argument():
    @scoped_by_progress_flag
    def seen(*, progress: bool = True) -> bool:
        return progress_allowed()

    assert seen() and not seen(progress=False)
    with progress_scope(False):
        assert not seen(progress=True)  # a quiet caller silences what it calls
        with progress_scope(True):
            assert not progress_allowed()
    assert progress_allowed()


def test_chunks_cover_every_item_once_and_count_them(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert list(chunks(10, 4, desc="score", unit="prompt", delay=0)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(0, 4, desc="score", unit="prompt", delay=0)) == []
    err = capsys.readouterr().err
    assert "score: 100%" in err and "10/10" in err


def test_a_featurize_worker_counts_its_texts_unless_told_not_to(tmp_path, tiny_encoder, monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    featurizer = get_featurizer(tiny_encoder, max_tokens=64)
    texts = [f"prompt number {i}" for i in range(50)]
    featurize_part(featurizer, texts, part=(0, 1), cache_dir=tmp_path / "quiet", progress=False)
    assert "featurize" not in capsys.readouterr().err
    part = featurize_part(featurizer, texts, part=(0, 1), cache_dir=tmp_path / "shown")  # `router-ml featurize`
    err = capsys.readouterr().err
    assert part["complete"] and "featurize transformer: 100%" in err and "50/50" in err


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    table, _ = load_traffic(DEMO)
    return write_jsonl(table.records[:240], tmp_path_factory.mktemp("progress") / "train.jsonl")


def _train(args: list[str], *, terminal: bool, env: dict[str, str]) -> tuple[dict, str]:
    """``router-ml train ...`` with stderr on a pseudo-terminal (120 columns) or a pipe: (stdout's JSON, stderr)."""
    cmd = [sys.executable, "-m", "router_ml.cli", "train", *args]
    full_env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV} | env
    if not terminal:
        out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout), out.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks_read: list[bytes] = []

    def drain() -> None:  # read while it runs: a full pty buffer would block the child
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed
                return
            if not data:
                return
            chunks_read.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=full_env)
    finally:
        os.close(slave)
    stdout, _ = proc.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    stderr = b"".join(chunks_read).decode("utf-8", "replace")
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


@pytest.mark.slow
@pytest.mark.parametrize(("terminal", "quiet", "env", "bars"), [
    (True, False, {}, True),
    (True, True, {}, False),
    (False, False, {}, False),
    (False, False, {PROGRESS_ENV: "1"}, True),
], ids=["terminal", "terminal-quiet", "pipe", "pipe-forced"])
def test_a_real_training_run_shows_epoch_step_and_loss_only_where_wanted(tmp_path, small_log, tiny_encoder,
                                                                          terminal, quiet, env, bars):
    # its own feature cache: every run featurizes (and shows that bar), whatever ran before
    args = ["--config", ROOT / "training/configs/encoder.toml", "--data", small_log, "--out", tmp_path / "r",
            "--cache-dir", tmp_path / "features",
            "--set", f"router.encoder={tiny_encoder}", "--set", "router.max_length=24",
            "--set", f"featurizer.name={tiny_encoder}", "--set", "featurizer.max_tokens=64",
            "--set", "train.epochs=2", "--set", "train.patience=5", "--set", "eval.n_boot=0",
            "--set", "eval.baselines=random", "--set", "tracking.enabled=false"]
    summary, stderr = _train([str(a) for a in args] + (["--quiet"] if quiet else []), terminal=terminal, env=env)
    assert summary["router"] == "encoder" and summary["test"]["aiq"] is not None  # stdout: one clean JSON object
    steps = -(-summary["train_records"] // 16)  # encoder.toml: batch 16
    epoch_bars = [f"train epoch {e}/2: 100%" for e in (1, 2)]
    if bars:
        for line in epoch_bars:
            assert line in stderr, stderr[-2000:]
        assert f"{steps}/{steps}" in stderr and ("step/s" in stderr or "s/step" in stderr)
        assert "loss=" in stderr and "val_loss=" in stderr
        assert "featurize transformer: 100%" in stderr and "240/240" in stderr
    else:
        assert "train epoch" not in stderr and "%|" not in stderr and "loss=" not in stderr, stderr[-2000:]
    if quiet:
        assert "router-ml: loaded" not in stderr  # the log lines go too
    else:  # our progress messages stay; ONNX Runtime's optimizer chatter during the export does not
        assert "router-ml: loaded 240 records" in stderr and "Fused" not in stderr, stderr[-2000:]
