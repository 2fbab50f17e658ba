"""Evaluation compares bicubic and student weights on the same tiles and writes a Markdown table."""

import pytest
import torch
from safetensors.torch import save_file

from slimdiffsr_qgis.contract import BadInput
from backend.models import StudentConfig, build, save
from rasters import smooth_image
from training.data.crops import EvaluationTile
from training.evaluation.dists import DISTS, load_dists
from training.evaluation.report import evaluate, markdown
from training.evaluation.scoring import MetricSet
from training.losses.perceptual import LPIPS

torch.set_num_threads(1)


def tiles(*images) -> list[EvaluationTile]:
    """HR [3, H, W] float32 arrays as evaluation images of one sensor."""
    return [EvaluationTile("scene", "sensor", 0, 0, image.astype("float32")) for image in images]


@pytest.fixture
def student_x4(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "student_x4.safetensors"
    save(build(StudentConfig.tiny(4)), path, {"normalisation": "percentile:2,98"})
    return str(path)


def test_table_lists_bicubic_and_the_student_with_lpips_and_dists_when_their_weights_are_given(student_x4, tmp_path):
    dists_file = tmp_path / "dists.safetensors"
    reference = DISTS()
    torch.nn.init.uniform_(reference.alpha, 0.1, 1.0)
    torch.nn.init.uniform_(reference.beta, 0.1, 1.0)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(dists_file))
    images = tiles(*(smooth_image(3, 32, 32, seed=s) for s in range(2)))
    rows = evaluate(["bicubic", student_x4], images, 4, torch.device("cpu"),
                    MetricSet(lpips=LPIPS(), dists=load_dists(str(dists_file))))
    assert [r.name for r in rows] == ["bicubic (baseline)", "student_x4.safetensors"]
    assert rows[0].parameters == 0 and rows[1].parameters > 0
    assert all(r.seconds > 0 and r.lpips is not None and r.dists > 0 and 0 < r.ssim <= 1 for r in rows)
    table = markdown(rows, "caption")
    assert table.count("\n| ") == 3 and "| n/a |" in table  # header + 2 rows; NIQE not measured


def test_dists_is_zero_for_identical_images_and_grows_with_distortion():
    metric = DISTS()
    torch.nn.init.uniform_(metric.alpha, 0.1, 1.0)
    torch.nn.init.uniform_(metric.beta, 0.1, 1.0)
    image = torch.from_numpy(smooth_image(3, 64, 64)).float()[None]
    noisy = (image + 0.05 * torch.randn_like(image)).clamp(0, 1)
    noisier = (image + 0.3 * torch.randn_like(image)).clamp(0, 1)
    assert metric(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < metric(image, noisy).item() < metric(image, noisier).item()


def test_a_model_of_another_scale_is_refused(tmp_path):
    path = tmp_path / "x8.safetensors"
    save(build(StudentConfig.tiny(8)), path)
    with pytest.raises(BadInput, match="x8 model"):
        evaluate([str(path)], tiles(smooth_image(3, 32, 32)), 4, torch.device("cpu"), MetricSet())
