"""What every route of the Serve app shares: the request gate (ids, admission, the request
series), request ids, the one HTTP error type, request bodies read with bounds, the API key,
the security headers, the OpenAPI spec, and `make_api`, which builds one replica's FastAPI app
from them and the protocols."""
