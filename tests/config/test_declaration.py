"""The declared options (``config/declaration.py``): every one in --help with its default
once, and the values they refuse, one line each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ignite_rn50.config.declaration import FIELDS, flag
from ignite_rn50.config.parsing import parse_config
from ignite_rn50.errors import UserError
from tests.helpers import assert_one_line_error, run_cli


def test_help_lists_every_flag_with_default() -> None:
    proc = run_cli(["--help"])
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for name in FIELDS:
        assert flag(name) in text, flag(name)
    for seed_flag in ("--device", "--gpu-id", "--seed", "--world-size", "--amp", "--momentum",
                      "--weight-decay", "--batch-size", "--lr", "--epochs", "--data",
                      "--print-freq", "--addr", "--nproc"):
        assert seed_flag in text
    assert text.count("(default:") >= len(FIELDS)
    # each option states its default once (argparse's own would repeat ours)
    options = [" ".join(entry.split()) for entry in
               re.split(r"\n  (?=-)", proc.stdout.split("options:", 1)[1])]
    assert not [o for o in options if o.count("default") > 1 and "(default:" in o], options
    for name, shown in (("--gpu-id", "the process's local rank"), ("--loss-scale", "dynamic"),
                        ("--eval-batch-size", "--batch-size"), ("--amp", "on for npu/cuda")):
        entry = next(o for o in options if re.match(re.escape(name) + "[ ,]", o))
        assert f"(default: {shown}" in entry, entry


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--lr", "-0.1"], "--lr must be positive"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "30", "--nproc", "4"], "must divide evenly over 4 processes"),
    (["--depth", "20"], "--depth"),
    (["--epochs", "many"], "--epochs"),
])
def test_bad_flag_values_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_cli(["--dataset", "synthetic", "--output-dir", str(tmp_path / "o"), *args])
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "o").exists()


def test_mix_options_are_checked() -> None:
    base = ["--dataset", "synthetic"]
    for flags, needle in ((["--mixup-prob", "0.5"], "--mixup-prob 0.5 needs --mixup-alpha"),
                          (["--mixup-alpha", "1", "--cutmix-alpha", "1", "--mixup-prob", "0.7",
                            "--cutmix-prob", "0.6"], "must sum to at most 1"),
                          (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
                          (["--cutmix-alpha", "-1"], "--cutmix-alpha must be >= 0")):
        with pytest.raises(UserError, match=re.escape(needle)):
            parse_config(base + flags)
    # a warm-up longer than the run: the package's performance runs (20 epochs' warm-up, 2 run)
    cfg = parse_config(base + ["--warmup-epochs", "20", "--epochs", "2"])
    assert cfg.warmup_epochs == 20


@pytest.mark.parametrize("argv, needle", [
    (["--ema-momentum", "0"], "--ema-momentum must be in (0, 1)"),
    (["--ema-momentum", "1.5"], "--ema-momentum must be in (0, 1)"),
    (["--clip-grad-norm", "0"], "--clip-grad-norm must be positive"),
    (["--accum-steps", "0"], "--accum-steps must be >= 1"),
    (["--batch-size", "32", "--accum-steps", "3"], "use a multiple of 3"),
    (["--batch-size", "32", "--nproc", "2", "--accum-steps", "3"], "use a multiple of 6"),
    (["--graph", "--accum-steps", "2"], "--accum-steps is not captured"),
    (["--graph", "--clip-grad-norm", "1"], "--clip-grad-norm is not captured"),
    (["--profile-steps", "4:2"], "--profile-steps must be A:B with 1 <= A <= B"),
])
def test_trainer_options_refuse_bad_values(argv: list[str], needle: str) -> None:
    with pytest.raises(UserError, match=re.escape(needle)):
        parse_config(argv)


def test_trainer_options_are_off_by_default() -> None:
    cfg = parse_config(["--dataset", "synthetic"])
    assert (cfg.ema_momentum, cfg.clip_grad_norm, cfg.accum_steps, cfg.sync_bn,
            cfg.deterministic, cfg.profile_steps) == (None, None, 1, False, False, None)
