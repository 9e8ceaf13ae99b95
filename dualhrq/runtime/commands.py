"""`dualhrq serve`, `dualhrq broker` and `dualhrq keys generate` (wired into the CLI by dualhrq/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING

from dualhrq.arguments import port, positive_int, tcp_address
from dualhrq.config import MAX_PORT
from dualhrq.errors import ConfigurationError

if TYPE_CHECKING:
    from dualhrq.config import CurveConfig, ServeConfig

# The secret `dualhrq broker` and its `serve --connect` workers share to seal their control bus (a local
# `serve --workers N` makes its own). An environment variable, not a flag: any user can read a command line.
CONTROL_KEY_ENV = "DUALHRQ_CONTROL_KEY"

SERVE_HELP = """\
Serve a bundle to order gateways over ZeroMQ (protocol v1, docs/PROTOCOL.md).

The bundle's hashes are verified and the engine is warmed at every batch size before the socket binds:
once `ping` answers, `ready` is true and the first request pays no first-run cost. --config lays a serve
config (e.g. config/serve.yaml: the serve, act, patterns and compliance sections) over the bundle's own;
the model section always comes from the bundle. SIGTERM or SIGINT stops receiving, answers what is in
flight (serve.drain_timeout_s at most) and exits 0.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a bundle over ZeroMQ (protocol v1)", description=SERVE_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--bundle", required=True, help="bundle directory written by `dualhrq export`")
    serve.add_argument("--config", default=None, help="serve config laid over the bundle's, e.g. config/serve.yaml")
    serve.add_argument("--bind", type=tcp_address(), default=None,
                       help="client address (default serve.bind, tcp://127.0.0.1:5555; loopback unless you say "
                            "otherwise)")
    serve.add_argument("--workers", type=positive_int, default=None,
                       help="N engine processes behind a broker on the same address (serve.workers); each request "
                            "of an instrument goes to the same worker, a worker that dies is restarted")
    serve.add_argument("--connect", type=tcp_address(following=2), default=None, metavar="ADDR",
                       help="run as one worker of a broker elsewhere (`dualhrq broker`): ADDR is its backend, "
                            "e.g. tcp://broker-host:5556; the control bus is on the next two ports, sealed with "
                            f"the secret in ${CONTROL_KEY_ENV} (the broker's)")
    serve.add_argument("--metrics-port", type=port, default=None,
                       help="Prometheus metrics on this HTTP port (serve.metrics_port; 0: none)")
    serve.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line")
    serve.set_defaults(func=_cmd_serve)

    broker = subparsers.add_parser(
        "broker", help="a broker that workers on other machines join",
        description="Clients connect to --bind; workers (`dualhrq serve --connect tcp://THIS-HOST:PORT`) connect "
                    "to the --backend address, and relay admin state on the next two ports, sealed with the secret "
                    f"in ${CONTROL_KEY_ENV} (give the workers the same). CURVE, if configured in --config, is "
                    "applied to the client side.")
    broker.add_argument("--bind", type=tcp_address(), default="tcp://127.0.0.1:5555",
                        help="client address (default tcp://127.0.0.1:5555)")
    broker.add_argument("--backend", type=tcp_address(following=2), default="tcp://127.0.0.1:5556",
                        help="worker address (default tcp://127.0.0.1:5556); control bus on the next two ports")
    broker.add_argument("--config", default=None, help="serve config (for serve.curve)")
    broker.set_defaults(func=_cmd_broker)

    keys = subparsers.add_parser("keys", help="CURVE keys for the server, gateways and admins")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KEYS", required=True)
    gen = keys_sub.add_parser(
        "generate", help="write NAME.key (public) and NAME.key_secret (secret) in --out",
        description="Generate a CURVE key pair in ZeroMQ's certificate format. Give the server its .key_secret "
                    "(serve.curve.server_secret_key_file) and clients its .key; put each allowed client's .key in "
                    "serve.curve.allowed_clients_dir (admins' also in admin_keys_dir).")
    gen.add_argument("--out", required=True, help="directory for the key files")
    gen.add_argument("--name", required=True, help="key name, e.g. server or gateway-1")
    gen.set_defaults(func=_cmd_keys_generate)


def _overlay(args: argparse.Namespace) -> tuple[dict, str]:
    from dualhrq.runtime.host import read_overlay

    overlay = read_overlay(args.config) if args.config else {}
    serve = dict(overlay.get("serve") or {})
    for flag, key in (("bind", "bind"), ("workers", "workers"), ("metrics_port", "metrics_port")):
        if getattr(args, flag, None) is not None:
            serve[key] = getattr(args, flag)
    return {**overlay, "serve": serve}, args.config or "command line"


def _cmd_serve(args: argparse.Namespace) -> int:
    from dualhrq.compliance.gate import ComplianceGate
    from dualhrq.runtime.backend import BackendKeys, BrokerAddresses
    from dualhrq.runtime.host import load_host, serve_settings
    from dualhrq.runtime.logs import use_json_logs
    from dualhrq.runtime.server import Server
    from dualhrq.runtime.supervisor import run_workers
    from dualhrq.runtime.workers import ControlBus

    if args.log_json:
        use_json_logs()
    overlay, source = _overlay(args)
    cfg = serve_settings(args.bundle, overlay, source)
    if cfg.serve.workers > 1 and not args.connect:
        _check_worker_ports(cfg.serve, source)
        return run_workers(args.bundle, overlay, source, cfg.serve, getattr(args, "verbose", False), args.log_json)
    bus, keys = None, None
    if args.connect:
        addresses, key = BrokerAddresses.remote(args.connect), _control_key()
        bus, keys = ControlBus(addresses.control_in, addresses.control_out, key), BackendKeys.derive(key)
    server = Server(cfg.serve, lambda path, hooks: load_host(path, overlay, hooks, source), args.bundle,
                    gate=ComplianceGate(cfg.compliance), connect=args.connect, control=bus, backend_keys=keys)
    try:
        return asyncio.run(server.run())
    finally:
        if bus is not None:
            bus.close()


def _check_worker_ports(serve: ServeConfig, source: str) -> None:
    """The workers of a local `serve --workers N` serve their metrics on the N ports after serve.metrics_port."""
    if serve.metrics_port and serve.metrics_port + serve.workers > MAX_PORT:
        raise ConfigurationError(f"{source}: serve.metrics_port: {serve.metrics_port} leaves no room for the "
                                 f"{serve.workers} workers' own metrics ports after it (at most "
                                 f"{MAX_PORT - serve.workers})")


def _cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from dualhrq.config import CurveConfig
    from dualhrq.runtime.backend import BrokerAddresses
    from dualhrq.runtime.broker import Broker

    curve = _broker_curve(args.config) if args.config else CurveConfig()
    broker = Broker(BrokerAddresses.remote(args.backend, frontend=args.bind), curve, control_key=_control_key()).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"broker: clients on {args.bind}, workers on {args.backend}; Ctrl-C to stop", flush=True)
    stop.wait()
    broker.stop()
    return 0


def _broker_curve(path: str) -> CurveConfig:
    """serve.curve of a serve config file, validated as strictly as `serve` validates it (ConfigurationError
    naming the file and the key). The whole serve section is checked: a typo there is an error, not ignored."""
    import msgspec

    from dualhrq.config import ServeConfig
    from dualhrq.runtime.host import read_overlay

    try:
        return msgspec.convert(read_overlay(path).get("serve") or {}, ServeConfig, strict=True).curve
    except msgspec.ValidationError as e:
        raise ConfigurationError(f"{path}: serve: {e}") from None


def _control_key() -> bytes:
    """The control bus's secret, from the environment; ConfigurationError when it is unset or too short."""
    key = os.environ.get(CONTROL_KEY_ENV, "")
    if len(key) < 16:
        raise ConfigurationError(
            f"{CONTROL_KEY_ENV}: {'unset' if not key else 'shorter than 16 characters'}; a broker on the network and "
            "its workers seal their admin relays with a secret they share there, so that nobody else can switch "
            f"the kill switch off or reload a bundle (e.g. export {CONTROL_KEY_ENV}=$(openssl rand -hex 32), the "
            "same on every machine)")
    return key.encode()


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from dualhrq.runtime.security import generate_keys

    public, secret = generate_keys(args.out, args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (keep it; mode 0600)")
    return 0
