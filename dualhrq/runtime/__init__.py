"""The serving runtime: `dualhrq serve` answers order gateways over ZeroMQ (docs/PROTOCOL.md).

protocol.py       messages, strict decoding, the error each bad body earns
bar_columns.py    a request's bars from their MessagePack bytes to numpy columns, in one compiled pass
server.py         asyncio + ROUTER, one reply per request       host.py     a loaded bundle
hosting.py        the bundle served: first load, reloads that swap hosts, the old one retired
admin.py          admin commands: who may, what each changes, the relay to sibling workers
streams.py        `append` sessions' windows (LRU, expiry)      batcher.py  the engine's queue and micro-batches
act.py            ACT at serve time: segments until each row halts, the carry fed back
metrics.py        Prometheus metrics      logs.py  log lines (plain, JSON)      security.py  CURVE keys, allow-lists
supervisor.py     `serve --workers N`: starts and restarts the local workers
workers.py        a worker process, admin relay                 workers_http.py  the workers' metrics on one port
broker.py         routes by instrument to live workers          backend.py  broker <-> worker frames
client.py         the gateway client (sync and asyncio, sessions)
signals.py        the serving path offline, for `dualhrq replay`; served_replay.py: the same through a live server
commands.py       serve, broker, keys generate

The engines themselves (ONNX Runtime, TensorRT, torch) are dualhrq.export.engines: the runtime only drives them.
"""
