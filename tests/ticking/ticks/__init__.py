"""Scheduled tasks for the container tests: one module each, chosen with JOB_MODULES."""
