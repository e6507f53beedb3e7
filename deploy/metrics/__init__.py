"""Prometheus metrics (prometheus-client), on their own port (METRICS_PORT, never port 80).

Every process of the stack counts into prometheus-client's multiprocess mode: the entrypoint
empties PROMETHEUS_MULTIPROC_DIR at start, each gunicorn worker and consumer process writes
its counters there, and one exposition sums them all, a worker that was replaced included
(its counters stay counted; gunicorn's `child_exit` hook marks it dead, as the library asks).
Three modules, one for each kind of process that uses them:

- requests.py: the web worker's, requests answered by the app and the batches of @batched;
- jobs.py: the consumer's, jobs that ended; and the job store's own figures (collected at
  each scrape, the same in every container that shares the store);
- exposition.py: the one process that serves them all (the gunicorn master with ROLE=all or
  web, the consumer with ROLE=worker), with nginx's and gunicorn's figures.

    flask_stack_http_requests_total{method,route,status}   requests answered by the app; route
                                                           is the Flask rule (bounded), not the path
    flask_stack_http_request_duration_seconds{method,route}  their latency (histogram)
    flask_stack_batch_size{function}                        calls gathered into each batch (histogram)
    flask_stack_batch_wait_seconds{function}                each call's wait for its batch (histogram)
    flask_stack_gunicorn_workers                            gunicorn's running workers
    nginx_connections_{active,reading,writing,waiting}      nginx's stub_status
    nginx_connections_{accepted,handled}_total, nginx_http_requests_total, nginx_up
    flask_stack_jobs{status,task}                           scheduled, queued and running jobs
    flask_stack_jobs_oldest_queued_age_seconds              how long the oldest queued job has waited
    flask_stack_jobs_finished_total{task,status}            jobs ended done, failed, interrupted, canceled
    flask_stack_jobs_store_up                               whether the job store answered
    flask_stack_schedule_runs_total{task}                   a scheduled task's ticks run,
    flask_stack_schedule_skipped_total{task}                ... skipped (a run still live),
    flask_stack_schedule_missed_total{task}                 ... and missed (no consumer ran)
    flask_stack_schedule_last_success_timestamp_seconds{task}  when its last run ended done

A failure to count never fails a request or a job: it is logged and the work goes on.
"""

_metrics = {}  # made once per process: prometheus-client allows one metric of a name


def metric(kind, name: str, documentation: str, labels: list[str], **options):
    """The process's metric `name`, made the first time it is asked for."""
    if name not in _metrics:
        _metrics[name] = kind(name, documentation, labels, **options)
    return _metrics[name]
