"""A service that is not the example, for the tests: its own routes, a job, a readiness
check, an init command, a WebSocket, a static folder; no /healthz of its own. It is added to
the stack the README's way (Dockerfile beside it)."""

import os
import sqlite3

import click
from flask import Flask, current_app, jsonify, redirect, request, url_for
from flask_sock import Sock

from deploy import init_app, readiness_check
from myservice import tasks  # noqa: F401  (registers make_report)


def database() -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(current_app.instance_path, "myservice.sqlite"))


def not_in_maintenance() -> bool:
    """Ready unless an operator put the file `maintenance` in the instance folder."""
    return not os.path.exists(os.path.join(current_app.instance_path, "maintenance"))


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(SECRET_KEY=os.environ.get("SECRET_KEY"))
    init_app(app)
    readiness_check(app, not_in_maintenance)
    sock = Sock(app)

    @app.get("/hello")
    def hello():
        return jsonify(hello="from myservice", client=request.remote_addr)

    @app.get("/where")
    def where():
        return jsonify(url=url_for("hello", _external=True))

    @app.get("/go")
    def go():
        return redirect(url_for("hello", _external=True))

    @app.get("/big")
    def big():
        return jsonify(words=["compressible"] * 500)

    @app.get("/prestart")
    def prestart():
        with open(os.path.join(app.instance_path, "prestart-ran")) as f:
            return jsonify(ran=f.read().strip())

    @app.get("/greetings")
    def greetings():
        with database() as db:
            return jsonify(greetings=[row[0] for row in db.execute("select text from greeting")])

    @sock.route("/echo")
    def echo(ws):
        while True:
            ws.send(f"echo: {ws.receive()}")

    @app.cli.command("init-db")
    def init_db():
        """Create the database in the instance folder."""
        os.makedirs(app.instance_path, exist_ok=True)
        with database() as db:
            db.execute("create table if not exists greeting (text text)")
            db.execute("insert into greeting values ('hello from the instance folder')")
        click.echo("initialized the database")

    return app
