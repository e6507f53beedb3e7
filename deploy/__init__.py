"""The stack around the app: configuration, nginx settings, supervisord extension, health check."""
