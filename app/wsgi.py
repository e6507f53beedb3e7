"""The WSGI entry point gunicorn serves by default (APP_MODULE=app.wsgi:app)."""

from app import create_app

app = create_app()
