"""`srum judge serve`: a local Triton judge server in the foreground, until SIGINT/SIGTERM.

Only click is imported at module top: `srum --help` must stay fast; the server module is imported when
the command runs.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import click


def _pairs(values: Tuple[str, ...], option: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r} is not KEY=VALUE", param_hint=option)
        out[key.strip()] = value
    return out


@click.command("serve")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 = a free port")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 = a free port")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 = a free port")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (loopback by default)")
@click.option("--model-repository", type=click.Path(exists=True, file_okay=False),
              help="source repository to generate the local one from (default: the checked-in triton_models/); "
                   "with --as-is, served exactly as it is")
@click.option("--as-is", is_flag=True, help="serve --model-repository unchanged (no local parameters, every model in it)")
@click.option("--backend", default="toy", show_default=True, help="judge backend: toy | hf | bagel | module:Class")
@click.option("--param", "judge_params", multiple=True, metavar="KEY=VALUE", help="judge backend parameter (repeatable)")
@click.option("--boxer", default="components", show_default=True, help="boxer backend: components | sam | module:Class")
@click.option("--boxer-param", "boxer_params", multiple=True, metavar="KEY=VALUE", help="boxer parameter (repeatable)")
@click.option("--evaluator", default=None, help="also serve srum_evaluator with this judge backend")
@click.option("--evaluator-param", "evaluator_params", multiple=True, metavar="KEY=VALUE",
              help="evaluator parameter (repeatable)")
@click.option("--instances", type=click.IntRange(1, 64), default=None,
              help="model instances per model (CPU; default: the count in triton_models/, 2)")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="where the generated repository and tritonserver.log go (default: a new temporary directory)")
@click.option("--startup-timeout", type=click.FloatRange(1, None), default=300.0, show_default=True)
@click.option("--keys-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="serve gRPC through the judge gateway: team keys (JSON of SHA-256 hashes), per-team limits and "
                   "metrics; Triton's own gRPC port then stays on loopback")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, help="gateway TLS certificate")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="its private key")
@click.option("--gateway-metrics-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="the gateway's per-team metrics (0 = a free port)")
def serve_command(grpc_port: int, http_port: int, metrics_port: int, host: str, model_repository: Optional[str],
                  as_is: bool, backend: str, judge_params: Tuple[str, ...], boxer: str, boxer_params: Tuple[str, ...],
                  evaluator: Optional[str], evaluator_params: Tuple[str, ...], instances: Optional[int],
                  run_dir: Optional[str], startup_timeout: float, keys_file: Optional[str], tls_cert: Optional[str],
                  tls_key: Optional[str], gateway_metrics_port: int) -> None:
    """Start a local Triton judge server (the real tritonserver) and keep it up until Ctrl-C / SIGTERM.

    Clients cannot load or unload models on it (model control mode `none`)."""
    import signal
    import threading

    from .server import LocalTritonServer, TritonServerError, local_models

    if as_is and not model_repository:
        raise click.UsageError("--as-is needs --model-repository")
    if (tls_cert or tls_key) and not keys_file:
        raise click.UsageError("--tls-cert/--tls-key are the gateway's: they need --keys-file")
    gateway = None
    public_grpc = grpc_port
    if keys_file:
        from .gateway import GatewayConfigError, JudgeGateway, load_keys

        try:
            gateway = JudgeGateway("pending", load_keys(keys_file), tls_cert=tls_cert, tls_key=tls_key,
                                   listen=f"{host}:{grpc_port}", metrics_port=gateway_metrics_port, metrics_host=host)
        except GatewayConfigError as e:
            raise click.ClickException(str(e)) from None
        grpc_port = 0          # Triton's own gRPC: a free loopback port behind the gateway
    if as_is:
        server = LocalTritonServer(model_repository=model_repository, run_dir=run_dir, host=host,
                                   grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                                   startup_timeout=startup_timeout)
    else:
        models = local_models(backend, _pairs(judge_params, "--param"), boxer, _pairs(boxer_params, "--boxer-param"),
                              evaluator, _pairs(evaluator_params, "--evaluator-param"))
        for spec in models.values():
            spec.instances = instances
        server = LocalTritonServer(models, source=model_repository, run_dir=run_dir, host=host, grpc_port=grpc_port,
                                   http_port=http_port, metrics_port=metrics_port, startup_timeout=startup_timeout)

    stop = threading.Event()
    received = []
    started = threading.Event()

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()
        if not started.is_set():
            # still waiting for readiness: interrupt the wait; `finally` stops the half-started server
            raise KeyboardInterrupt

    gateway_thread = None
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except TritonServerError as e:
            raise click.ClickException(str(e)) from None
        if gateway is not None:
            gateway.upstream = server.grpc_url
            try:
                gateway_thread = gateway.run_in_thread()
            except Exception as e:  # noqa: BLE001 - a port in use, unreadable TLS files: one clear line
                raise click.ClickException(f"judge gateway on {host}:{public_grpc}: {e}") from None
        started.set()
        click.echo(f"srum judge server ready (pid {server.proc.pid})")
        if gateway_thread is not None:
            click.echo(f"  grpc     {server._host_for_url}:{gateway.port} (gateway: team keys"
                       f"{', TLS' if tls_cert else ''}; teams {', '.join(sorted(gateway.teams))})")
            click.echo(f"  gateway metrics http://{server._host_for_url}:{gateway.metrics_port}/metrics")
        else:
            click.echo(f"  grpc     {server.grpc_url}")
        click.echo(f"  http     {server.http_url}")
        click.echo(f"  metrics  {server.metrics_url}")
        click.echo(f"  models   {', '.join(server.served_models())}")
        click.echo(f"  log      {server.log_path}")
        click.echo("Ctrl-C or SIGTERM stops it.", err=True)
        while not stop.wait(0.5):
            if not server.is_running():
                code = server.proc.returncode if server.proc else None
                raise click.ClickException(f"tritonserver exited on its own (code {code}); see {server.log_path}")
    except KeyboardInterrupt:
        if not received:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if gateway_thread is not None:
            try:
                gateway_thread.stop()
            except Exception:  # noqa: BLE001 - stopping the server below matters more
                pass
        server.stop()
    if received:
        click.echo(f"stopped on {signal.Signals(received[0]).name}", err=True)
