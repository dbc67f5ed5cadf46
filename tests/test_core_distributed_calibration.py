"""BN calibration across 2 gloo processes equals calibration over all batches in one process."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

import us3l
from us3l.models import us_resnet18


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 32, 32, generator=g) for _ in range(4)]


def _model():
    torch.manual_seed(0)
    return us_resnet18(num_classes=0, cifar_stem=True)


def _worker(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _model()
        us3l.calibrate_bn(model, _batches()[rank::2], 0.5)  # each process sees half the batches
        if rank == 0:
            torch.save({k: v for k, v in model.state_dict().items() if "_w0500" in k}, out)
    finally:
        dist.destroy_process_group()


def test_calibration_all_reduces_across_processes(tmp_path):
    port = free_port()
    out = str(tmp_path / "stats.pth")
    mp.start_processes(_worker, args=(port, out), nprocs=2, start_method="spawn")
    distributed = torch.load(out, weights_only=True)
    single = _model()
    us3l.calibrate_bn(single, _batches(), 0.5)
    expected = {k: v for k, v in single.state_dict().items() if "_w0500" in k}
    assert expected.keys() == distributed.keys() and len(expected) == 2 * 20
    for k in expected:
        assert torch.allclose(expected[k], distributed[k], atol=1e-5), k
