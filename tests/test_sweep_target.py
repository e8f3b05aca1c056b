"""Target resolution (gdn_tune.sweep.target): --gpu against the GPU present, auto, the interpreter, and one
worker per GPU of one model."""

import pytest
import torch

from gdn_kernels import target_by_name
from gdn_tune.sweep import run_sweep
from gdn_tune.sweep.target import GpuMismatchError, resolve_target


@pytest.fixture
def present(monkeypatch):
    def set_present(found):
        monkeypatch.setattr("gdn_tune.sweep.target.present_gpu", lambda: found)

    return set_present


def test_gpu_must_match_the_present_one(present):
    present(("NVIDIA H100 80GB HBM3", (9, 0)))
    with pytest.raises(
        GpuMismatchError, match=r"found NVIDIA H100 80GB HBM3 \(compute capability 9\.0\).*--gpu h100"
    ):
        resolve_target("h200", interpret=False)
    assert resolve_target("auto", interpret=False)[0].name == "h100"
    assert resolve_target("h100", interpret=False) == (target_by_name("h100"), "NVIDIA H100 80GB HBM3")
    present(("NVIDIA GeForce RTX 4090", (8, 9)))
    with pytest.raises(GpuMismatchError, match="matches none of the known targets"):
        resolve_target("h200", interpret=False)
    present(None)
    with pytest.raises(GpuMismatchError, match=r"no CUDA GPU found.*--interpret"):
        resolve_target("h200", interpret=False)
    with pytest.raises(GpuMismatchError, match="--gpu auto: no CUDA GPU found"):
        resolve_target("auto", interpret=True)
    assert resolve_target("h200", interpret=True)[0].name == "h200"  # the interpreter needs no GPU


@pytest.mark.gpu
def test_gpu_sweep_refuses_another_target():
    found = resolve_target("auto", interpret=False)[0]
    other = next(name for name in ("b200", "a100") if name != found.name)
    with pytest.raises(GpuMismatchError, match=f"--gpu {found.name}"):
        run_sweep(other, preset="smoke", kernels=["gdn_gating"], db_url="sqlite://")


@pytest.mark.parametrize(
    "gpus, workers, message",
    [
        (["NVIDIA H200"] * 2, 3, r"3 workers but 2 GPU\(s\) visible"),
        (["NVIDIA H200", "NVIDIA H100 80GB HBM3"], 2, "the GPUs of this host differ"),
    ],
    ids=["more-workers-than-gpus", "mixed-gpus"],
)
def test_gpu_workers_need_one_gpu_each_of_one_model(monkeypatch, gpus, workers, message):

    from gdn_tune.sweep.target import check_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: gpus[i])
    with pytest.raises(ValueError, match=message):
        check_gpus(workers, gpus[0])
    check_gpus(1, gpus[0])  # one worker on the first GPU is fine
