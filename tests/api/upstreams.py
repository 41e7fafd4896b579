"""Minimal foreign embedding servers for the proxy tests: one speaking OpenAI's embeddings format, one KServe v2.

Both serve the tiny encoder of ``api_helpers`` on 1x8x8 images. The OpenAI one can be told to misbehave
(``state["mode"]``) and records what it received.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def _embed(encoder: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder(torch.from_numpy(batch)).numpy().astype(np.float32)


def openai_app(encoder: torch.nn.Module) -> tuple[FastAPI, dict[str, Any]]:
    """An OpenAI-style ``POST /v1/embeddings`` (images as base64 float32 tensors, answers in reverse order).

    ``state["mode"]``: ``ok``; ``500``; ``500-once`` (then ``ok``); ``429-once`` (with ``Retry-After: 0``);
    ``401``; ``sleep`` (2 s); ``nan``; ``short`` (one embedding too few); ``wrongdim``; ``notjson``; ``down`` (503).
    ``state["inputs"]`` counts the images answered, ``state["calls"]`` the requests, ``state["auth"]`` the last
    ``Authorization`` header.
    """
    state: dict[str, Any] = {"mode": "ok", "inputs": 0, "calls": 0, "auth": None}
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        state["calls"] += 1
        state["auth"] = request.headers.get("authorization")
        mode = state["mode"]
        if mode in ("500", "500-once", "down"):
            if mode == "500-once":
                state["mode"] = "ok"
            return JSONResponse({"error": {"message": "boom"}}, status_code=503 if mode == "down" else 500)
        if mode == "401":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        if mode == "429-once":
            state["mode"] = "ok"
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
        if mode == "sleep":
            await asyncio.sleep(2.0)
        if mode == "notjson":
            return Response("<html>gateway</html>", media_type="text/html")
        body = await request.json()
        shape = body["input_shape"]
        batch = np.stack([np.frombuffer(base64.b64decode(s), "<f4").reshape(shape) for s in body["input"]])
        vectors = _embed(encoder, batch)
        if mode == "nan":
            vectors[0, 0] = np.nan
        if mode == "wrongdim":
            vectors = vectors[:, :-1]
        data = [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)]
        if mode == "short":
            data = data[:-1]
        state["inputs"] += len(data)
        answer = {"object": "list", "data": data[::-1], "model": body.get("model"),
                  "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        return Response(json.dumps(answer), media_type="application/json")  # NaN as Python's json writes it

    return app, state


def kserve_app(encoder: torch.nn.Module, name: str = "tiny") -> tuple[FastAPI, dict[str, Any]]:
    """A KServe v2 model ``name``: metadata at ``GET /v2/models/NAME``, ``POST /v2/models/NAME/infer``."""
    state: dict[str, Any] = {"inputs": 0}
    app = FastAPI()
    c, h, w = encoder.input_shape
    dim = encoder.embed_dim

    @app.get(f"/v2/models/{name}")
    async def metadata() -> dict[str, Any]:
        return {"name": name, "platform": "pytorch",
                "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, c, h, w]}],
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]}

    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request) -> dict[str, Any]:
        body = await request.json()
        tensor = body["inputs"][0]
        assert tensor["name"] == "pixels" and tensor["datatype"] == "FP32"
        batch = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
        vectors = _embed(encoder, batch)
        state["inputs"] += len(vectors)
        return {"model_name": name, "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": list(vectors.shape), "data": vectors.ravel().tolist()}
        ]}

    return app, state
