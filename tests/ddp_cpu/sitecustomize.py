"""TEST ONLY: Ultralytics' real multi-GPU (DDP) launch and training, on a machine without GPUs.

tests/e2e/test_ddp_cpu.py puts this folder on PYTHONPATH (with YOLO_SUPERVISOR_TEST_DDP_ON_CPU=1) for
the training child it starts; every process of that job (the child, torchrun, the ranks) inherits it.
When ``ultralytics.engine.trainer`` is imported, three things change and nothing else:

- ``select_device("0,1")`` returns ``cuda:0`` without asking CUDA (which has no device here). The
  trainer then counts two devices and takes its real DDP path: it writes its DDP script and the
  cloudpickled state with our callbacks, and runs ``python -m torch.distributed.run --nproc_per_node 2``.
- In each rank, ``BaseTrainer._setup_ddp`` joins a **gloo** process group on the CPU instead of NCCL
  on ``cuda:LOCAL_RANK`` (the rest of it is ``torch.cuda.set_device``).
- ``DistributedDataParallel`` gets ``device_ids=None`` for the CPU model (Ultralytics passes
  ``[device.index]``, which is ``[None]`` on a CPU and which DDP refuses).

With YOLO_SUPERVISOR_TEST_SAVES set, every call of ``BaseTrainer.save_model`` (in any process) appends
"RANK EPOCH TIME" to that file once the save is done, so a test can count the saves; with YOLO_SUPERVISOR_TEST_SLOW_SAVE=S as
well, every save after the first takes S seconds more (a big model's save, on a small one).

So the ranks do real DDP training on the CPU: gradients all-reduced by gloo, DistributedSampler,
Ultralytics' own broadcasts and gathers, our stop agreement and barrier. What this cannot show: NCCL,
CUDA streams, GPU memory, and Ultralytics' final_eval (it asks CUDA for the current device; the tests
end every run before it).
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

TARGET = "ultralytics.engine.trainer"


def _patch(trainer_module) -> None:
    import torch
    import torch.distributed as dist

    real_select = trainer_module.select_device

    def select_device(device="", *args, **kwargs):
        text = str(device)
        if text and all(part.strip().isdigit() for part in text.split(",")):
            return torch.device("cuda", int(text.split(",")[0]))
        return real_select(device, *args, **kwargs)

    def _setup_ddp(self):
        self.device = torch.device("cpu")
        self.accelerator = None
        dist.init_process_group(backend="gloo", rank=int(os.environ["RANK"]), world_size=self.world_size)

    real_ddp = torch.nn.parallel.DistributedDataParallel

    class CpuDistributedDataParallel(real_ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            super().__init__(module, None if device_ids == [None] else device_ids, *args, **kwargs)

    real_save_model = trainer_module.BaseTrainer.save_model

    def save_model(self):
        saves = os.environ.get("YOLO_SUPERVISOR_TEST_SAVES")
        if not saves:
            return real_save_model(self)
        slow = float(os.environ.get("YOLO_SUPERVISOR_TEST_SLOW_SAVE") or 0)
        if slow and os.path.exists(saves):
            time.sleep(slow)
        done = real_save_model(self)
        with open(saves, "a") as f:
            f.write(f"{os.environ.get('RANK', '-1')} {self.epoch} {time.time()}\n")  # when it was on disk
        return done

    trainer_module.select_device = select_device
    trainer_module.BaseTrainer.save_model = save_model
    trainer_module.BaseTrainer._setup_ddp = _setup_ddp
    torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches the trainer module right after it is first imported (torchrun never imports it)."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("YOLO_SUPERVISOR_TEST_DDP_ON_CPU"):
    sys.meta_path.insert(0, _PatchAfterImport())
