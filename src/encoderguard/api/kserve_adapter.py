"""The KServe / Triton open inference protocol (v2), ``POST /v2/models/NAME/infer``.

Request::

    {"inputs": [{"name": "input", "shape": [N, C, H, W], "datatype": "FP32", "data": [flat row-major floats]}]}

Answer: ``{"outputs": [{"name": ..., "shape": [N, D], "datatype": "FP32", "data": [flat floats]}]}`` (the output
named ``output_name`` if given, else the only or first one). The URL is the model's, ``http://host:port/v2/models/NAME``
(``.../versions/V`` too), or the server's with the model name given as ``model``; ``GET`` on the model's URL (the
model metadata) gives the input name, the image shape and the answer size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from encoderguard.api.wire_adapter import WireAdapter

_FLOAT_TYPES = ("FP32", "FP64", "FP16")


class KServeAdapter(WireAdapter):
    """KServe v2 inference.

    Args:
        model: the model's name, for a URL without ``/v2/models/NAME``.
        input_name: the input tensor's name (default: the metadata's first input, else ``"input"``).
        output_name: the output tensor to read (default: the only or first one).
    """

    name = "kserve"

    def __init__(self, *, model: str | None = None, input_name: str | None = None,
                 output_name: str | None = None) -> None:
        super().__init__(model=model)
        self.input_name = input_name
        self.output_name = output_name
        self.model_path = f"/v2/models/{model}" if model is not None else None

    def base_url(self, url: str) -> str:
        root, marker, model = url.rstrip("/").partition("/v2/models/")
        if marker:
            self.model_path = marker + model
        elif self.model_path is None:
            raise ValueError(f"a kserve URL names the model: http://HOST:PORT/v2/models/NAME, got {url!r} (or give "
                             "the model name)")
        return root

    def embed_request(self, batch: np.ndarray) -> tuple[str, dict[str, Any]]:
        array = np.asarray(batch, dtype=np.float32)
        return f"{self.model_path}/infer", {
            "inputs": [{
                "name": self.input_name or "input",
                "shape": [int(v) for v in array.shape],
                "datatype": "FP32",
                "data": array.reshape(-1).tolist(),
            }]
        }

    def parse_answer(self, payload: Any, n: int) -> np.ndarray:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise ValueError("the answer has no 'outputs' list")
        chosen = outputs[0]
        if self.output_name is not None:
            named = [o for o in outputs if o.get("name") == self.output_name]
            if not named:
                raise ValueError(f"the answer has no output {self.output_name!r} (it has "
                                 f"{[o.get('name') for o in outputs]})")
            chosen = named[0]
        shape, datatype = chosen.get("shape"), chosen.get("datatype", "FP32")
        if datatype not in _FLOAT_TYPES:
            raise ValueError(f"output {chosen.get('name')!r} has datatype {datatype!r}, expected FP32")
        if not isinstance(shape, list) or len(shape) != 2 or shape[0] != n or not isinstance(shape[1], int) or (
            shape[1] < 1
        ):
            raise ValueError(f"output {chosen.get('name')!r} has shape {shape}, expected [{n}, D]")
        try:
            flat = np.asarray(chosen.get("data"), dtype=np.float32).reshape(-1)
        except (ValueError, TypeError):
            raise ValueError(f"output {chosen.get('name')!r} data is not a list of numbers") from None
        if flat.size != n * shape[1]:
            raise ValueError(f"output {chosen.get('name')!r} has {flat.size} values for shape {shape}")
        return flat.reshape(n, shape[1])

    def describe_path(self) -> str | None:
        return self.model_path

    def parse_description(self, payload: Any) -> tuple[tuple[int, int, int] | None, int | None]:
        if not isinstance(payload, dict):
            raise ValueError("the model metadata is not a JSON object")
        shape: tuple[int, int, int] | None = None
        dim: int | None = None
        inputs = payload.get("inputs")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            if self.input_name is None and isinstance(inputs[0].get("name"), str):
                self.input_name = inputs[0]["name"]
            dims = inputs[0].get("shape")
            if isinstance(dims, list) and len(dims) == 4 and all(isinstance(v, int) and v > 0 for v in dims[1:]):
                shape = (dims[1], dims[2], dims[3])
        outputs = payload.get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            named = [o for o in outputs if isinstance(o, dict) and o.get("name") == self.output_name]
            dims = (named or outputs)[0].get("shape")
            if isinstance(dims, list) and len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 0:
                dim = dims[1]
        return shape, dim
