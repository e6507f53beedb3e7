"""A model service on the stack, for the tests: POST /predict answers the class that the iris
classifier gives two numbers, through a model loaded once and shared by the workers
(PRELOAD_APP), its predictions batched across requests (`batched`), each worker ready once it
has warmed the model up. Built the README's way (Dockerfile beside it)."""

import math

from flask import Flask, jsonify, request

from deploy import batched, json_errors, post_fork, readiness_check
from modelservice.model import MODEL_FILE, IrisModel


class BadInput(ValueError):
    """What is wrong with a request's body, in words for the client."""


def features_of(body, count: int) -> list[float]:
    if not isinstance(body, dict) or "features" not in body:
        raise BadInput(f'the body must be JSON: {{"features": [{count} numbers]}}')
    features = body["features"]
    if not isinstance(features, list) or len(features) != count:
        raise BadInput(f"features must be a list of {count} numbers, not {str(features)[:100]}")
    for index, value in enumerate(features):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadInput(f"features[{index}] must be a finite number, not {str(value)[:100]}")
    return features


def create_app() -> Flask:
    app = Flask(__name__)
    json_errors(app)
    model = IrisModel()
    post_fork(model.start)  # the session and its threads, in each worker

    def model_warmed_up() -> bool:
        return model.warmed_up

    readiness_check(app, model_warmed_up)  # /readyz: 503 until this worker has warmed the model up
    classify = batched(max_size=32, max_wait_ms=5)(model.classify)

    @app.post("/predict")
    def predict():
        try:
            features = features_of(request.get_json(silent=True), model.features)
        except BadInput as error:
            return jsonify(error="Bad Request", message=str(error)), 400
        return jsonify({"class": classify(features)})

    @app.get("/about")
    def about():
        return jsonify(service="modelservice", model=MODEL_FILE)

    return app
