"""GET /: what this service is, a small JSON answer (the benchmark's fast path)."""

from flask import Blueprint, current_app, jsonify

bp = Blueprint("index", __name__)


@bp.get("/")
def index():
    return jsonify(service="flask-stack example", version=current_app.config["APP_VERSION"])
