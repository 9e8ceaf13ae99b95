"""The serving runtime: `dualhrq serve` answers order gateways over ZeroMQ (docs/PROTOCOL.md).

protocol.py  messages, strict decoding, the error each bad body earns      engine.py   ONNX Runtime / TensorRT / torch
act.py       ACT at serve time (carry kept on the inference thread)        batcher.py  the one inference thread
host.py      a loaded bundle: features, retriever, engine (reload swaps)   server.py   asyncio + ROUTER, one reply each
metrics.py   Prometheus metrics        logs.py  JSON log lines             security.py CURVE keys and allow-lists
workers.py   a worker process, admin relay                                  client.py   gateway client (sync, asyncio)
broker.py    routes by instrument to live workers, answers a lost one's    backend.py  broker <-> worker frames
supervisor.py  `serve --workers N`: starts and restarts the local workers
signals.py   the serving path offline, for `dualhrq replay`                commands.py serve, broker, keys generate
"""
