"""Find, load and warm up the trained model for one worker: device, precision, threads."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..artifacts import load_model_dir
from .decoder import Preprocessing

log = logging.getLogger(__name__)

MAX_FORWARD_BATCH = 64


def pick_device(gpu_id: int | None) -> torch.device:
    """The worker's own GPU (MMS gives worker i the GPU i mod #GPUs), else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu_id % torch.cuda.device_count())
    return torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it (no overflow risk), fp16 on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class LoadedModel:
    network: nn.Module
    class_names: list[str]
    config: dict
    preprocessing: Preprocessing
    device: torch.device
    dtype: torch.dtype

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W normalised float32 -> N x num_classes probabilities (float32, on the CPU).

        Runs in chunks: an MMS batch of JSON batch requests can hold hundreds of images.
        """
        memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        outputs = []
        for chunk in batch.split(MAX_FORWARD_BATCH):
            inputs = chunk.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=memory_format)
            outputs.append(torch.softmax(self.network(inputs).float(), dim=1).cpu())
        return torch.cat(outputs)

    def warm_up(self, batch_sizes: tuple[int, ...]) -> float:
        """Run every batch size once (cuDNN autotuning, lazy allocations, CPU kernel caches) before /ping says ready."""
        started = time.perf_counter()
        size = self.preprocessing.image_size
        for batch_size in batch_sizes:
            self.predict(torch.zeros(batch_size, 3, size, size))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started


def load(model_dir: str | Path, gpu_id: int | None, cpu_threads: int | None) -> LoadedModel:
    if cpu_threads:
        # Each worker gets its share of the cores; MMS would otherwise leave OMP_NUM_THREADS=1 or oversubscribe.
        torch.set_num_threads(cpu_threads)
    device = pick_device(gpu_id)
    dtype = inference_dtype(device)
    network, class_names, config = load_model_dir(model_dir, map_location="cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: autotuned kernels pay off
        network = network.to(device, dtype, memory_format=torch.channels_last)
    log.info("loaded %s (%d classes) from %s on %s as %s", config["backbone"], len(class_names), model_dir, device, dtype)
    return LoadedModel(network.eval(), class_names, config,
                       Preprocessing.from_model_config(config), device, dtype)

