"""Class probabilities -> response bytes: sorted top-k JSON, or the full vector for argmax users."""
from __future__ import annotations

import io
import json

import numpy as np
import torch

from . import content_types


def top_k_entries(probabilities: torch.Tensor, class_names: list[str], top_k: int) -> list[dict]:
    """One image's probabilities -> [{"label", "index", "probability"}, ...], most likely first."""
    values, indices = torch.topk(probabilities.float(), min(top_k, probabilities.numel()))
    return [{"label": class_names[i], "index": i, "probability": p}
            for p, i in zip(values.tolist(), indices.tolist())]


def encode(probabilities: torch.Tensor, class_names: list[str], accept: str, top_k: int,
           full_vector: bool, single: bool) -> tuple[bytes, str]:
    """probabilities: N x num_classes. Returns (body, content type).

    application/x-npy always carries the full N x C float32 matrix, so np.argmax(response, 1) works;
    JSON carries top-k entries, or the full matrix as nested lists when full_vector is asked for.
    """
    if accept == content_types.NPY:
        buffer = io.BytesIO()
        np.save(buffer, probabilities.float().cpu().numpy(), allow_pickle=False)
        return buffer.getvalue(), content_types.NPY
    if accept == content_types.JSON_VERBOSE:
        rows = probabilities.float().cpu()
        results = [{"predicted_label": class_names[int(row.argmax())], "labels": list(class_names),
                    "probabilities": row.tolist()} for row in rows]
        return json.dumps(results[0] if single else results, allow_nan=False).encode(), content_types.JSON
    if full_vector:
        return json.dumps(probabilities.float().cpu().tolist(), allow_nan=False).encode(), content_types.JSON
    results = [top_k_entries(row, class_names, top_k) for row in probabilities.cpu()]
    return json.dumps(results[0] if single else results, allow_nan=False).encode(), content_types.JSON
