"""The HTTP protocols a replica speaks, one module each, each registering its own routes over a
`serve.service.Service` (`register(app, svc)`): predict.py (POST /predict), v2.py (the Open
Inference Protocol v2, with its binary tensor extension in v2_binary.py and its schemas in
v2_schemas.py), health.py (/v2/health/live|ready, also the health app's), model.py (GET /model)
and page.py (GET /)."""
