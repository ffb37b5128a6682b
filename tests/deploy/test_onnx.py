"""ONNX for deployment (``deploy/onnx.py``) through ``python -m ignite_rn50.export``: the
suite's trained checkpoint and an mmcls-layout fp16 file to ONNX, checked by onnxruntime
(static and dynamic batch), the whole test split through onnxruntime equal to evaluate's,
the AIPP config's arithmetic, the two naming conventions, pre-processing folded in, and the
one-line refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from ignite_rn50.data import pipelines
from ignite_rn50.data.readers import make_synthetic
from tests.helpers import assert_one_line_error, base_env, run_cli, run_main

LAST = re.compile(r"^onnx=(\S+) opset=(\d+) batch=(static \d+|dynamic) max_abs_diff=(\S+) "
                  r"top1_agree=(\d+)/(\d+)$")


def _export(trained: Path, *flags: str, checkpoint: str = "checkpoint_1.pt"
            ) -> tuple[int, list[str], str]:
    """In this process (torch is loaded already): the exit status, stdout lines, stderr."""
    proc = run_main(["--checkpoint", str(trained / checkpoint), "--config",
                     str(trained / "config.yaml"), *flags], module="ignite_rn50.export")
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr


def _last(lines: list[str]) -> re.Match:
    match = LAST.match(lines[-1])
    assert match, lines
    return match


def _ours(trained: Path, checkpoint: str, x: torch.Tensor) -> np.ndarray:
    from ignite_rn50.model.resnet import build_model
    from ignite_rn50.model.weights import load_into

    model = build_model(18, 10)
    load_into(model, trained / checkpoint, flag="--checkpoint")
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_static_batch_export_agrees_with_pytorch(trained: Path, tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    status, lines, err = _export(trained, "--output", str(path), "--batch", "4")
    assert status == 0, err
    match = _last(lines)
    assert (match[1], match[2], match[3]) == (str(path), "11", "static 4")
    assert float(match[4]) < 1e-4 and match[5] == match[6] == "4"
    assert err == ""  # no exporter warning reaches the user
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == \
        ["probs"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [4, 3, 8, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["static.onnx"]  # no temporary left
    # the file on its own, on other images: the same logits as PyTorch
    x = pipelines.normalize(make_synthetic(4, 10, 8, split_seed=9).images)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(theirs - _ours(trained, "checkpoint_1.pt", x)).max() < 1e-4


def test_mmcls_fp16_file_exports_with_a_dynamic_batch(trained: Path, tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    status, lines, err = _export(trained, "--output", str(path), "--dynamic-batch",
                                 checkpoint="mmcls_fp16.pth")
    assert status == 0, err
    match = _last(lines)
    assert match[3] == "dynamic" and float(match[4]) < 1e-4
    assert match[5] == match[6] == "8"  # batch 1 and batch 7
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = pipelines.normalize(make_synthetic(7, 10, 8, split_seed=9).images)
    for n in (1, 7):
        theirs = session.run(None, {"input": images[:n].numpy()})[0]
        ours = _ours(trained, "mmcls_fp16.pth", images[:n])
        assert theirs.shape == (n, 10) and np.abs(theirs - ours).max() < 1e-4
        assert (theirs.argmax(1) == ours.argmax(1)).all()


@pytest.mark.slow
def test_verify_data_equals_evaluate(trained: Path, tmp_path: Path) -> None:
    status, lines, err = _export(trained, "--output", str(tmp_path / "m.onnx"),
                                 "--batch", "16", "--verify-data")
    assert status == 0, err
    onnx_line = next(line for line in lines if line.startswith("onnxruntime on the test split"))
    proc = run_cli(["--checkpoint", str(trained / "checkpoint_1.pt"), "--config",
                    str(trained / "config.yaml")], module="ignite_rn50.evaluate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    top1, top5, _, images = re.match(r"top1=(\S+) top5=(\S+) loss=(\S+) images=(\d+)",
                                     proc.stdout.strip().splitlines()[-1]).groups()
    assert onnx_line.endswith(f"top1={top1} top5={top5} images={images}"), (onnx_line, top1)


def test_aipp_config_and_atc_command(trained: Path, tmp_path: Path) -> None:
    path, aipp = tmp_path / "m.onnx", tmp_path / "aipp.conf"
    status, lines, err = _export(trained, "--output", str(path), "--batch", "4",
                                 "--aipp", str(aipp))
    assert status == 0, err
    text = aipp.read_text()
    for line in ("aipp_mode : static", "input_format : RGB888_U8", "src_image_size_w : 8",
                 "mean_chn_0 : 129", "min_chn_0 : 0.304000", "mean_chn_2 : 112",
                 f"var_reci_chn_1 : {1 / 65.392:.9f}"):
        assert line in text, line
    check = next(line for line in lines if line.startswith("aipp="))
    diff = float(re.search(r"max_abs_diff=(\S+)", check)[1])
    assert diff < 1e-4 and "top1_agree=4/4" in check
    atc = next(line for line in lines if line.startswith("atc: "))
    assert f"--model={path} " in atc and "--framework=5" in atc
    assert '--input_shape="input:4,3,8,8"' in atc and f"--insert_op_conf={aipp}" in atc


def test_modelzoo_names_softmax_and_folded_preprocessing(trained: Path, tmp_path: Path) -> None:
    path = tmp_path / "pre.onnx"
    status, lines, err = _export(trained, "--output", str(path), "--batch", "2",
                                 "--names", "modelzoo", "--softmax", "--with-preprocess")
    assert status == 0, err
    graph = onnx.load(str(path)).graph
    assert graph.input[0].name == "actual_input_1" and graph.output[0].name == "output1"
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    raw = make_synthetic(2, 10, 8, split_seed=9).images
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"actual_input_1": raw.numpy()})[0]
    ours = torch.softmax(torch.from_numpy(_ours(trained, "checkpoint_1.pt",
                                                pipelines.normalize(raw))), 1).numpy()
    assert np.abs(probs - ours).max() < 1e-5 and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_other_opsets(trained: Path, tmp_path: Path) -> None:
    """13: the TorchScript exporter still; 18: the dynamo exporter (onnxscript)."""
    for opset in ("13", "18"):
        status, lines, err = _export(trained, "--output", str(tmp_path / f"{opset}.onnx"),
                                     "--opset", opset)
        assert status == 0 and err == "", err
        match = _last(lines)
        assert match[2] == opset and float(match[4]) < 1e-4


def test_refusals_are_one_line_and_leave_nothing(trained: Path, tmp_path: Path) -> None:
    def refused(*flags: str, needle: str, checkpoint: str = "checkpoint_1.pt") -> None:
        proc = run_main(["--checkpoint", str(trained / checkpoint), "--config",
                                 str(trained / "config.yaml"), *flags],
                        module="ignite_rn50.export")
        assert_one_line_error(proc, needle)

    target = tmp_path / "m.onnx"
    refused("--output", str(target), "--depth", "34", needle="does not fit this model")
    refused("--output", str(target), "--opset", "30", needle="the exporter wrote opset 18")
    refused("--output", str(tmp_path / "no" / "such" / "m.onnx"), needle="is not writable")
    refused("--output", str(target), checkpoint="missing.pt", needle="no such file")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_is_one_line(trained: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['onnxruntime'] = None  # what an absent package does\n"
            "from ignite_rn50 import export\n"
            f"sys.exit(export.main(['--checkpoint', {str(trained / 'checkpoint_1.pt')!r}, "
            f"'--config', {str(trained / 'config.yaml')!r}, '--output', "
            f"{str(tmp_path / 'm.onnx')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True,
                          text=True, timeout=300)
    line = assert_one_line_error(proc, "export needs onnxruntime, which is not installed")
    assert "pip install -r requirements-export.txt" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_takes_the_ema_weights_unless_told_raw(ema_runs: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    import onnxruntime as ort

    from ignite_rn50.model.resnet import build_model
    from ignite_rn50.model.weights import load_into

    whole, _ = ema_runs
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for which in ("ema", "raw"):
        onnx_file = tmp_path / f"{which}.onnx"
        flags = ["--output", str(onnx_file)] + (["--weights", "raw"] if which == "raw" else [])
        status, lines, err = _export(whole, *flags, checkpoint="checkpoint_2.pt")
        assert status == 0, err[-2000:]
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        outputs[which] = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        model = build_model(18, 10)
        load_into(model, whole / "checkpoint_2.pt", flag="--checkpoint", weights=which)
        with torch.no_grad():
            assert np.allclose(outputs[which], model.eval()(x).numpy(), atol=1e-4), which
    assert not np.allclose(outputs["ema"], outputs["raw"], atol=1e-3)


def test_a_folder_trained_checkpoint_exports_and_agrees(trained_folder: Path, digits_dir: Path,
                                                        tmp_path: Path) -> None:
    """Its record gives the image size, statistics, stem and classes: the flags name only
    the data its check runs on."""
    path = tmp_path / "digits.onnx"
    proc = run_main(["--checkpoint", str(trained_folder / "checkpoint_4.pt"), "--output",
                     str(path), "--batch", "4", "--data", str(digits_dir), "--num-workers", "0"],
                    module="ignite_rn50.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = _last(proc.stdout.strip().splitlines())
    assert float(match[4]) < 1e-4 and match[5] == match[6] == "4"
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [4, 3, 12, 12]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10


def test_a_folder_checkpoint_exports_with_nothing_but_itself(trained_folder: Path,
                                                             tmp_path: Path) -> None:
    """No --data: the check runs on seeded random uint8 images of the recorded size, through
    the recorded normalisation and the model the record describes; --verify-data, which
    reads the test split, then asks for the data in one line and writes nothing."""
    path = tmp_path / "alone.onnx"
    checkpoint = str(trained_folder / "checkpoint_4.pt")
    proc = run_main(["--checkpoint", checkpoint, "--output", str(path), "--dynamic-batch"],
                    module="ignite_rn50.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == "no --data: onnxruntime is checked on 16 random 12x12 images"
    match = _last(lines)
    assert float(match[4]) < 1e-4 and match[3] == "dynamic" and match[5] == match[6] == "16"
    graph = onnx.load(str(path)).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 12, 12]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    proc = run_main(["--checkpoint", checkpoint, "--output", str(tmp_path / "v.onnx"),
                     "--verify-data"], module="ignite_rn50.export")
    assert_one_line_error(proc, "--verify-data runs the exported model over the test split, "
                          "which needs --data: pass a folder holding train/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.onnx"]
