"""Long chaos run (issue 8 §1): ``python bench/chaos.py --duration 300 --clients 8``.

Three simulated ComfyUI backends as processes, the gateway in this process, N websocket clients
submitting prompts that use their uploads and fetching every image, and a fault injector (kill
and restart with empty history, freeze/thaw, slow, refuse connections, toggle the active server
through the admin API). Prints the figures and every broken invariant; exits 1 when one broke.
The engine is :mod:`tests.chaos.chaos_engine` (the CI test runs a short form of the same run).
Recorded figures: ``bench/CHAOS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.observability.logging import configure_logging  # noqa: E402
from tests.chaos.chaos_engine import FAULT_KINDS, ChaosSettings, run_chaos  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/chaos.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-faults", type=int, default=10_000, help="bound on the count")
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(0.3, 1.2),
        metavar=("MIN", "MAX"),
        help="random pause between two fault starts, seconds",
    )
    parser.add_argument("--job-duration", type=float, default=0.3)
    parser.add_argument(
        "--kinds", default=",".join(FAULT_KINDS), help=f"comma list of {', '.join(FAULT_KINDS)}"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--log-level", default="error", help="gateway log level")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="comfyui-gateway-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)

    settings = ChaosSettings(
        work_dir=work_dir,
        duration=args.duration,
        clients=args.clients,
        backends=args.backends,
        seed=args.seed,
        max_faults=args.max_faults,
        fault_gap=tuple(args.gap),
        fault_kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        job_duration=args.job_duration,
        prompt_timeout=120.0,
        fetch_timeout=90.0,
        drain_timeout=120.0,
        log=log,
    )
    started = time.perf_counter()
    log(f"chaos: {args.duration:.0f} s, {args.clients} clients, work dir {work_dir}")
    report = await run_chaos(settings)
    print(report.figures())
    problems = report.violations()
    for problem in problems:
        print(f"VIOLATION: {problem}")
    for line in report.details:
        print(line)
    print(f"wall time {time.perf_counter() - started:.0f} s; {'FAILED' if problems else 'OK'}")
    return 1 if problems else 0


if __name__ == "__main__":
    arguments = parse_args()
    configure_logging(level=arguments.log_level)
    raise SystemExit(asyncio.run(main(arguments)))
