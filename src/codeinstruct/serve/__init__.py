"""The OpenAI-compatible server: `codeinstruct serve`.

`create_app` builds the FastAPI app over an in-process `Engine` or in front of an upstream OpenAI-compatible
server (proxy mode); `build_app` loads what the CLI names; `listen` binds the socket and `run_server` serves
the app on it with uvicorn. The rooms: app (routes, auth, errors, health), backend (`ServingBackend`, what
the routes ask of the work behind them, and choosing it), local (that work on the engine), proxy (that work
upstream), openai_compat (requests to engine terms and back), schemas (request bodies), http (admission,
streams, attribution off the event loop), metrics (Prometheus /metrics) and static/ (the playground page).
"""

from codeinstruct.serve.app import (
    ServerSettings,
    build_app,
    create_app,
    default_model_name,
    listen,
    run_server,
)

__all__ = ["ServerSettings", "build_app", "create_app", "default_model_name", "listen", "run_server"]
