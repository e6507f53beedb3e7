"""The benchmark's model service (bench/models.py).

The model is a numpy array of MODEL_MB megabytes (300), built when this module is imported:
with PRELOAD_APP=true once, in gunicorn's master, else in each worker. Its inference is a
matrix-vector product over its first 12288 x 2048 numbers (96 MB, more than the CPU's caches),
a few milliseconds of one core, served two ways:

    GET /single    one product a request, in an OS thread (`in_os_thread`)
    GET /batched   the same through `@batched`: the products of a worker's concurrent requests
                   made as one matrix product
"""

import os

import numpy
from flask import Flask, jsonify

from deploy import batched, in_os_thread

ROWS, COLUMNS = 12288, 2048
MODEL = numpy.random.default_rng(0).standard_normal(
    max(ROWS * COLUMNS, int(float(os.environ.get("MODEL_MB", "300")) * 1e6) // 4), dtype=numpy.float32)
MATRIX = MODEL[:ROWS * COLUMNS].reshape(ROWS, COLUMNS)
INPUT = numpy.ones(COLUMNS, dtype=numpy.float32)


def infer(vector: numpy.ndarray) -> numpy.ndarray:
    return MATRIX @ vector


@batched(max_size=32, max_wait_ms=5)
def infer_batch(vectors: list) -> list:
    return list((MATRIX @ numpy.stack(vectors, axis=1)).T)


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index():
        return jsonify(service="benchmodel", model_mb=round(MODEL.nbytes / 1e6))

    @app.get("/single")
    def single():
        return jsonify(first=float(in_os_thread(infer, INPUT)[0]))

    @app.get("/batched")
    def batched_route():
        return jsonify(first=float(infer_batch(INPUT)[0]))

    return app
