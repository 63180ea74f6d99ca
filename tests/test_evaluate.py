"""Evaluation and prediction with ONNX Runtime (ftonnx.train.evaluate) and the eval/predict commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from ftonnx import metadata
from ftonnx.cli import main
from ftonnx.data import discover, load_image
from ftonnx.errors import FtonnxError
from ftonnx.evaluate import evaluate, predict

from helpers import build_tiny_model, make_folder


@pytest.fixture
def ten_classes(tmp_path: Path) -> Path:
    """class_0 .. class_9, three images each: the tiny model's labels."""
    return make_folder(tmp_path / "data", {f"class_{i}": 3 for i in range(10)}, seed=5)


def direct_logits(model_path: Path, paths: list[str]) -> np.ndarray:
    """The model's logits computed without ftonnx's batching: one ORT run on stacked images."""
    pre = metadata.read(onnx.load(str(model_path))).preprocess
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": np.stack([load_image(p, pre) for p in paths])})[0].astype(np.float64)


def test_evaluate_matches_direct_numpy(tiny_model_path, ten_classes):
    dataset, _ = discover(str(ten_classes))
    result = evaluate(tiny_model_path, dataset, batch_size=7)
    logits = direct_logits(tiny_model_path, [p for p, _ in dataset.samples])
    y = np.array([label for _, label in dataset.samples])
    pred = logits.argmax(axis=1)
    assert result["count"] == 30
    assert result["top1"] == pytest.approx(float((pred == y).mean()), abs=1e-12)
    z = logits - logits.max(axis=1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(30), y]))
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert result["top5"] == pytest.approx(float((top5 == y[:, None]).any(axis=1).mean()))
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 30 and confusion.sum(axis=1).tolist() == [3] * 10
    assert confusion[y[0], pred[0]] >= 1
    assert list(result["per_class"]) == dataset.classes
    assert result["per_class"]["class_4"] == pytest.approx(float((pred[y == 4] == 4).mean()))


def test_evaluate_ort_format_and_model_proto(tmp_path, tiny_model_path, ten_classes):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "tiny.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(tiny_model_path), options, providers=["CPUExecutionProvider"])
    dataset, _ = discover(str(ten_classes))
    from_onnx = evaluate(tiny_model_path, dataset)
    assert evaluate(tmp_path / "tiny.ort", dataset)["top1"] == from_onnx["top1"]
    assert evaluate(onnx.load(str(tiny_model_path)), dataset)["confusion"] == from_onnx["confusion"]


def test_evaluate_requires_the_models_classes(tiny_model_path, tmp_path):
    dataset, _ = discover(str(make_folder(tmp_path / "d", {"class_0": 1, "class_1": 1, "cat": 1})))
    with pytest.raises(FtonnxError, match="only the model has class_2.*only the data has cat"):
        evaluate(tiny_model_path, dataset)


def test_evaluate_without_top5_below_five_classes(tmp_path):
    path = tmp_path / "three.onnx"
    onnx.save(build_tiny_model(num_classes=3), str(path))
    dataset, _ = discover(str(make_folder(tmp_path / "d", {f"class_{i}": 2 for i in range(3)})))
    result = evaluate(path, dataset)
    assert "top5" not in result and result["count"] == 6


def test_predict_orders_by_probability(tiny_model_path, ten_classes):
    images = [str(ten_classes / "class_3" / "img0.png"), str(ten_classes / "class_7" / "img1.png")]
    results = predict(tiny_model_path, images, top=10)
    logits = direct_logits(tiny_model_path, images)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for best, row in zip(results, probs):
        assert [name for name, _ in best] == [f"class_{i}" for i in np.argsort(-row)]
        np.testing.assert_allclose([p for _, p in best], np.sort(row)[::-1], rtol=1e-5)
    assert [len(r) for r in predict(tiny_model_path, images, top=3)] == [3, 3]


def test_cli_eval_json_and_table(tiny_model_path, ten_classes):
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(tiny_model_path), "--data", str(ten_classes), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"loss", "top1", "top5", "per_class", "confusion", "count", "precision", "recall", "f1",
                            "support", "macro", "weighted"} and metrics["count"] == 30
    table = runner.invoke(main, ["eval", str(tiny_model_path), "--data", str(ten_classes)])
    assert table.exit_code == 0 and f"top1 {metrics['top1']:.4f}" in table.stdout
    lines = table.stdout.splitlines()
    assert lines[1].split()[:5] == ["class", "prec.", "recall", "F1", "n"]
    row = lines[2 + 9].split()
    assert row[0] == "class_9" and row[4] == "3"
    for column, key in zip(row[1:4], ("precision", "recall", "f1")):
        value = metrics[key]["class_9"]
        assert column == ("-" if value is None else f"{value:.4f}")


def test_precision_recall_f1_agree_with_the_confusion_matrix(tmp_path):
    path = tmp_path / "three.onnx"
    onnx.save(build_tiny_model(num_classes=3, seed=4), str(path))
    dataset, _ = discover(str(make_folder(tmp_path / "d", {"class_0": 5, "class_1": 7, "class_2": 4}, seed=2)))
    result = evaluate(path, dataset)
    matrix = np.array(result["confusion"], float)
    for i, name in enumerate(dataset.classes):
        predicted, actual = matrix[:, i].sum(), matrix[i].sum()
        precision = matrix[i, i] / predicted if predicted else None
        recall = matrix[i, i] / actual
        assert result["precision"][name] == (None if precision is None else pytest.approx(precision))
        assert result["recall"][name] == pytest.approx(recall) == pytest.approx(result["per_class"][name])
        assert result["support"][name] == actual
        if precision:
            assert result["f1"][name] == pytest.approx(2 * precision * recall / (precision + recall))
    defined = [v for v in result["f1"].values() if v is not None]
    assert result["macro"]["f1"] == pytest.approx(np.mean(defined))
    weights = matrix.sum(axis=1)
    assert result["weighted"]["recall"] == pytest.approx(result["top1"]) == pytest.approx(
        sum(result["recall"][n] * w for n, w in zip(dataset.classes, weights)) / weights.sum())


def test_predictions_are_each_images_probabilities_in_data_set_order(tiny_model_path, ten_classes):
    from ftonnx.evaluate import evaluate_with_predictions

    dataset, _ = discover(str(ten_classes))
    broken = Path(dataset.samples[4][0])
    broken.write_bytes(b"no longer an image")  # left out of the evaluation, and of the predictions
    result, predictions = evaluate_with_predictions(tiny_model_path, dataset, batch_size=4)
    kept = [(p, label) for p, label in dataset.samples if p != str(broken)]
    assert predictions.paths == [p for p, _ in kept] and result["count"] == 29
    assert predictions.targets.tolist() == [label for _, label in kept]
    logits = direct_logits(tiny_model_path, predictions.paths)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predictions.probabilities, expected, rtol=1e-5, atol=1e-7)
    assert result == evaluate(tiny_model_path, dataset, batch_size=4)


def test_cli_eval_with_list_file(tiny_model_path, tmp_path):
    root = make_folder(tmp_path / "img", {"all": 10})
    (tmp_path / "list.txt").write_text("".join(f"all/img{i}.png class_{i}\n" for i in range(10)))
    result = CliRunner().invoke(main, ["eval", str(tiny_model_path), "--data", str(root),
                                       "--list", str(tmp_path / "list.txt"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 10


def test_cli_predict(tiny_model_path, ten_classes):
    image = str(ten_classes / "class_0" / "img0.png")
    result = CliRunner().invoke(main, ["predict", str(tiny_model_path), image, "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    assert entry["image"] == image and len(entry["top"]) == 2
    assert [t["label"] for t in entry["top"]] == [name for name, _ in predict(tiny_model_path, [image], top=2)[0]]


@pytest.mark.parametrize("case", ["no_model", "no_data", "wrong_classes", "bad_list", "no_image", "corrupt_image"])
def test_cli_bad_input_exits_2(tmp_path, tiny_model_path, ten_classes, case):
    other = make_folder(tmp_path / "other", {"cat": 1, "dog": 1})
    (tmp_path / "bad.txt").write_text("class_0/img0.png\n")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"no image")
    args = {
        "no_model": ["eval", str(tmp_path / "missing.onnx"), "--data", str(ten_classes)],
        "no_data": ["eval", str(tiny_model_path), "--data", str(tmp_path / "nowhere")],
        "wrong_classes": ["eval", str(tiny_model_path), "--data", str(other)],
        "bad_list": ["eval", str(tiny_model_path), "--data", str(ten_classes), "--list", str(tmp_path / "bad.txt")],
        "no_image": ["predict", str(tiny_model_path), str(tmp_path / "missing.jpg")],
        "corrupt_image": ["predict", str(tiny_model_path), str(corrupt)],
    }[case]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("ftonnx: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_evaluate_bad_model_file(tmp_path, ten_classes):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model")
    dataset, _ = discover(str(ten_classes))
    with pytest.raises(FtonnxError, match="not a readable ONNX model"):
        evaluate(garbage, dataset)
