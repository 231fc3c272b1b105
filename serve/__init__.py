"""Ray Serve application for modresnet checkpoints.

app.py (the Serve deployments and builders), service.py (one replica's state), protocols/ (the
HTTP routes, one module per protocol), http/ (what every route shares: the request gate, request
ids, errors, bodies, auth, headers, OpenAPI), backends/ (the inference backends and their
contract), metrics.py (a replica's Prometheus series), gpus.py (the checks of GPU replicas),
args.py (every setting, and serve/config.yaml generated from them), launch.py and commands.py
(`modresnet serve`), client.py, demo.py and quantize.py (`python -m serve.demo`, `python -m
serve.quantize`).
"""
