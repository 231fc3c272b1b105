"""`modresnet jobs`: the Ray Jobs API client. submit.py submits `modresnet train|tune|serve`
as a job (its working_dir an allowlist of this source tree) and follows it (list, status,
logs, stop); http.py holds the requests that carry the cluster token and the strict parsing
of the addresses they may go to; commands.py, the `modresnet jobs` commands."""
