"""``minerva serve-bench``: concurrency, request-rate and batching figures for a served model.

Without ``--endpoint`` the command starts ``llama_cpp.server`` on loopback on the
model's GGUF (``--threads`` threads) and stops it at the end; with it, it measures
that server. It prints markdown tables: the concurrency sweep (aggregate tokens/s,
speedup and efficiency against one request, TTFT and TpT p50/p90/p99, goodput under
``--slo-ttft-ms`` / ``--slo-tpt-ms``), and on request a sequential-vs-concurrent
comparison, Poisson request-rate runs, served-vs-in-process llama.cpp ratios, batched
transformers generation, and the computed KV cache per sequence. Failed requests are
counted by reason, never averaged in; any failure makes the exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest_minerva.errors import MinervaError, printable
from pytest_minerva.option_types import (
    MAX_CONTEXT,
    Amount,
    Count,
    Counts,
    output_file,
    seed_value,
    timeout_seconds,
)
from pytest_minerva.options import (
    API_KEY_ENV,
    ENDPOINT,
    MODEL,
    RUNS,
    THREADS,
    Settings,
    add_cli_options,
    add_location_options,
)
from pytest_minerva.session import MinervaSession, build_session
from pytest_minerva.timing.report import cell

PROMPT_FILE = "long.txt"

#: Requests in flight at once (a sweep level, a batch, N-at-once): each is a connection and a
#: thread here and a slot on the server; a thousand is past any server this measures.
in_flight = Count(1, 1024)
#: Requests sent in one run of a level or a rate.
request_count = Count(1, 100_000)
#: A token count (generated, prompt, context): no model has a longer context.
token_count = Count(1, MAX_CONTEXT)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve-bench`` on the ``minerva`` command line."""
    bench = subparsers.add_parser(
        "serve-bench",
        help="serving figures: concurrency sweep, request rates, goodput, served vs in-process, batching",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_cli_options(bench, "serve-bench", MODEL, ENDPOINT, API_KEY_ENV, model={"action": None})
    bench.add_argument("--api", choices=["completions", "chat"], default="completions", help="default: completions")
    bench.add_argument(
        "--concurrency",
        type=Counts(in_flight),
        default=[1, 2, 4, 8],
        metavar="N,N",
        help="in-flight requests per sweep level (default: 1,2,4,8)",
    )
    bench.add_argument(
        "--requests",
        type=request_count,
        metavar="N",
        help="requests per sweep level (default: max(4, 2 x concurrency))",
    )
    bench.add_argument(
        "--rounds",
        type=Count(1, 1000),
        default=2,
        metavar="N",
        help="run the sweep N times, alternating the order of levels, and pool each level (default: 2)",
    )
    bench.add_argument(
        "--max-tokens", type=token_count, default=32, metavar="N", help="tokens per request (default: 32)"
    )
    bench.add_argument(
        "--prompt-tokens", type=token_count, default=64, metavar="N", help="prompt length in tokens (default: 64)"
    )
    bench.add_argument(
        "--duration", type=timeout_seconds, metavar="SECONDS", help="stop sending new requests of a level after this"
    )
    bench.add_argument(
        "--sequential-vs-concurrent",
        type=in_flight,
        metavar="N",
        help="also send N requests one at a time, then N at once",
    )
    bench.add_argument(
        "--rate",
        type=Amount(10_000.0),
        action="append",
        metavar="RPS",
        help="also run Poisson arrivals at this many requests/s; repeatable",
    )
    bench.add_argument(
        "--rate-requests", type=request_count, default=16, metavar="N", help="requests per rate run (default: 16)"
    )
    bench.add_argument(
        "--seed", type=seed_value, default=0, metavar="N", help="seed of the Poisson schedule (default: 0)"
    )
    bench.add_argument("--slo-ttft-ms", type=Amount(86_400_000.0), metavar="MS", help="goodput SLO on TTFT")
    bench.add_argument("--slo-tpt-ms", type=Amount(86_400_000.0), metavar="MS", help="goodput SLO on TpT")
    bench.add_argument(
        "--compare-in-process",
        type=Count(1, 10_000),
        metavar="N",
        help="also generate N prompts through the server and in-process with llama.cpp, alternately, and "
        "report served / in-process ratios",
    )
    bench.add_argument(
        "--batch",
        type=Counts(in_flight),
        metavar="B,B",
        help="also time batched generation in-process with transformers at these batch sizes (e.g. 1,2,4,8)",
    )
    add_cli_options(bench, "serve-bench", RUNS, THREADS)
    bench.add_argument("--n-ctx", type=token_count, default=2048, metavar="N", help="server context (default: 2048)")
    bench.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up on a request after this long without data (default: 60)",
    )
    bench.add_argument("--json", type=output_file, metavar="PATH", help="write every figure and request here")
    add_location_options(bench, "serve-bench")
    bench.set_defaults(func=cmd_serve_bench)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(stats: Any) -> str:
    return "-" if stats is None else f"{stats.p50:.1f} / {stats.p90:.1f} / {stats.p99:.1f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def load_table(rows: Sequence[Any], sweep: Any = None, label: str = "in-flight") -> str:
    """Markdown rows for load results (concurrency levels or request rates)."""
    lines = [
        f"| {label} | sent | ok | failed | wall s | agg tok/s | speedup | efficiency "
        "| TTFT ms p50/p90/p99 | TpT ms p50/p90/p99 | goodput req/s | good |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(r.failures_by_reason().items()))
        failed = cell(f"{len(r.failed)} ({failures})") if failures else "0"
        speedup = sweep.speedup(r) if sweep is not None else None
        efficiency = sweep.efficiency(r) if sweep is not None else None
        lines.append(
            f"| {r.level:g} | {len(r.results)} | {len(r.ok)} | {failed} | {r.wall_s:.2f} | {_num(r.aggregate_tps, 1)} "
            f"| {_num(speedup)} | {_num(efficiency)} | {_pct(r.stats_ms('ttft'))} | {_pct(r.stats_ms('tpt'))} "
            f"| {_num(r.goodput_rps)} | {r.good}/{len(r.results)} |"
        )
    return "\n".join(lines) + "\n"


def _resolve_gguf(session: MinervaSession) -> Any:
    model = session.models[0]
    for spec in model.artifacts:
        if spec.format == "gguf":
            return session.resolver.resolve(model, spec)
    raise MinervaError(f"{model.name} has no GGUF artifact to serve or tokenize with")


def cmd_serve_bench(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from contextlib import ExitStack

    from pytest_minerva.serving import loadgen
    from pytest_minerva.serving.client import Endpoint, Timeouts
    from pytest_minerva.serving.server import LlamaCppServer, served_tokenizers
    from pytest_minerva.timing.scenarios import prompt_text

    out = out if out is not None else sys.stdout
    slo = loadgen.Slo(args.slo_ttft_ms, args.slo_tpt_ms)
    artifact: Any = None
    session = build_session(Settings.from_args(args))
    if args.endpoint is None or args.compare_in_process or args.batch or Path(args.model).suffix == ".gguf":
        artifact = _resolve_gguf(session)
    document: dict[str, Any] = {"kind": "serve-bench"}
    failures = 0
    with ExitStack() as stack:
        server = None
        if args.endpoint:
            endpoint = Endpoint(args.endpoint, args.api_key_env)
            where = f"{endpoint.url} ({args.api})"
        else:
            server = stack.enter_context(
                LlamaCppServer(artifact.path, n_ctx=args.n_ctx, threads=args.threads, api_key_env=args.api_key_env)
            )
            endpoint = server.endpoint
            where = f"llama_cpp.server started here on {artifact.path.name}, {args.threads} thread(s), loopback"
        tokenize, detokenize, token_source = served_tokenizers(endpoint, artifact)
        per_level = args.requests or (lambda c: max(4, 2 * c))
        levels = [per_level(c) if callable(per_level) else per_level for c in args.concurrency]
        needed = args.rounds * sum(levels) + 2 * (args.sequential_vs_concurrent or 0)
        needed += args.rate_requests * len(args.rate or []) + (args.compare_in_process or 0) + 2
        needed = max(needed, max(args.batch or [0]))
        text = prompt_text(PROMPT_FILE)
        prompts = loadgen.rotated_prompts(text, needed, words=args.prompt_tokens * 2)
        if tokenize is not None and detokenize is not None:
            prompts = loadgen.fit_prompts(prompts, args.prompt_tokens, tokenize, detokenize)
        model = _served_model(endpoint) if args.endpoint else None
        workload = loadgen.Workload(
            prompts, args.max_tokens, args.api, model, timeouts=Timeouts(read_s=args.timeout, total_s=args.timeout * 10)
        )
        settings = {
            "where": where,
            "api": args.api,
            "max_tokens": args.max_tokens,
            "prompt_tokens": args.prompt_tokens,
            "concurrency": args.concurrency,
            "requests_per_level": levels,
            "rounds": args.rounds,
            "slo": slo.describe(),
            "tokenizer": token_source,
            "server": server.info() if server is not None else None,
        }
        document["settings"] = settings
        out.write(f"# minerva serve-bench: {printable(where)}\n\n")
        out.write(
            f"{args.prompt_tokens}-token prompts (distinct), {args.max_tokens} generated tokens each (EOS ignored), "
            f"greedy; SLO: {printable(slo.describe())}; tokenizer: {printable(token_source)}.\n\n"
        )
        rss_before = server.rss_bytes() if server is not None else None
        sweep = loadgen.concurrency_sweep(
            endpoint,
            workload,
            args.concurrency,
            requests_per_level=per_level,
            duration_s=args.duration,
            slo=slo,
            count=tokenize,
            rounds=args.rounds,
        )
        rss_after = server.rss_bytes() if server is not None else None
        used = sweep.prompts_used
        out.write(f"## Concurrency sweep ({args.rounds} round(s), levels pooled)\n\n" + load_table(sweep.levels, sweep))
        out.write("\n")
        sources = {k: v for level in sweep.levels for k, v in level.count_sources().items()}
        out.write(f"Token counts from: {', '.join(sorted(sources)) or 'none'}.\n\n")
        document["sweep"] = sweep.as_dict()
        all_runs = list(sweep.levels)
        if args.sequential_vs_concurrent:
            pair = loadgen.sequential_vs_concurrent(
                endpoint, workload, args.sequential_vs_concurrent, slo=slo, count=tokenize, first_index=used
            )
            used += 2 * args.sequential_vs_concurrent
            out.write("## Sequential vs concurrent\n\n")
            out.write(load_table([pair.sequential, pair.concurrent]))
            out.write(f"\nConcurrent wall time / sequential: {_num(pair.wall_ratio)}.\n\n")
            document["sequential_vs_concurrent"] = pair.as_dict()
            all_runs += [pair.sequential, pair.concurrent]
        if args.rate:
            rate_runs = []
            for rate in args.rate:
                rate_runs.append(
                    loadgen.run_poisson(
                        endpoint,
                        workload,
                        rate,
                        args.rate_requests,
                        seed=args.seed,
                        duration_s=args.duration,
                        slo=slo,
                        count=tokenize,
                        first_index=used,
                    )
                )
                used += args.rate_requests
            out.write(f"## Poisson arrivals (seed {args.seed})\n\n" + load_table(rate_runs, label="req/s") + "\n")
            document["rates"] = [r.as_dict() for r in rate_runs]
            all_runs += rate_runs
        failures = sum(len(r.failed) for r in all_runs)
        examples = {k: v for r in all_runs for k, v in r.failure_examples().items()}
        if examples:
            out.write("## Failed requests\n\n")
            out.write(
                "".join(printable(f"- {reason}: {message}") + "\n" for reason, message in sorted(examples.items()))
            )
            out.write("\n")
        if args.compare_in_process:
            document["served_vs_in_process"] = _compare(args, endpoint, workload, artifact, tokenize, used, server, out)
        if artifact is not None:
            document["kv"] = _kv_section(artifact, max(args.concurrency), rss_before, rss_after, out)
        if args.batch:
            document["batch"] = _batch_section(args, artifact, prompts, out)
    if args.json:
        from pytest_minerva.storage.atomic import atomic_write_json
        from pytest_minerva.storage.results import make_document

        envelope = make_document(
            settings=settings, backends=[], benchmarks=[], versions=_versions(), machine=session.machine_info()
        )
        envelope["serving"] = document
        session.update_report(envelope)
        path = atomic_write_json(args.json, envelope)
        out.write(f"wrote {printable(path)}\n")
    return 1 if failures else 0


def _served_model(endpoint: Any) -> str | None:
    """The first model the server lists, or None (also when it cannot be asked: requests will say why)."""
    from pytest_minerva.serving.client import request_json

    try:
        listing = request_json(endpoint, "GET", "/v1/models")
    except MinervaError:
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    return str(first["id"]) if "id" in first else None


def _versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for dist in ("pytest-minerva", "llama-cpp-python", "uvicorn", "fastapi", "sse-starlette", "transformers", "torch"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _compare(
    args: argparse.Namespace,
    endpoint: Any,
    workload: Any,
    artifact: Any,
    tokenize: Any,
    first_index: int,
    server: Any,
    out: TextIO,
) -> dict[str, Any]:
    from pytest_minerva.backends import builtin_registry
    from pytest_minerva.backends.base import LoadOptions
    from pytest_minerva.serving import loadgen

    threads = server.threads if server is not None else args.threads
    backend = builtin_registry().get("llama_cpp").build(artifact, LoadOptions(threads=threads, n_ctx=args.n_ctx))
    try:
        pair = loadgen.served_vs_in_process(
            endpoint, workload, backend, args.compare_in_process, count=tokenize, first_index=first_index
        )
    finally:
        backend.close()
    data = pair.as_dict()
    medians, ratios = data["medians"], data["ratios_served_over_in_process"]
    out.write(f"## Served vs in-process llama.cpp ({threads} thread(s) each, {data['pairs']} prompts, alternating)\n\n")
    out.write("| figure | served | in-process | served / in-process |\n|---|---:|---:|---:|\n")
    for metric, label in (("ttft_ms", "TTFT ms"), ("tpt_ms", "TpT ms"), ("decode_tps", "decode tok/s")):
        out.write(
            f"| {label} (median) | {_num(medians['served'][metric])} | {_num(medians['in_process'][metric])} "
            f"| {_num(ratios[metric], 3)} |\n"
        )
    failed = data["served_failed"] + data["in_process_failed"]
    out.write(
        f"\nFailed: {data['served_failed']} served, {data['in_process_failed']} in-process.\n\n" if failed else "\n"
    )
    return data


def _kv_section(artifact: Any, concurrency: int, rss_before: int | None, rss_after: int | None, out: TextIO) -> Any:
    from pytest_minerva import formats
    from pytest_minerva.serving.batching import DEFAULT_CONTEXTS, kv_projection
    from pytest_minerva.serving.server import SERVER_KV_CACHE_DTYPE

    summary = artifact.summary or formats.verify(artifact.path)
    try:
        projection = kv_projection(summary.metadata, "llama_cpp", {"kv_cache_dtype": SERVER_KV_CACHE_DTYPE})
    except MinervaError as exc:
        out.write(f"## KV cache\n\n{printable(exc)}\n\n")
        return {"error": str(exc)}
    out.write(f"## KV cache per sequence (computed, llama.cpp {projection.cache_dtype})\n\n")
    out.write(f"{projection.formula} = {projection.bytes_per_token:,.0f} bytes per token.\n\n")
    out.write(f"| context | per sequence MiB | x{concurrency} sequences MiB |\n|---:|---:|---:|\n")
    batch = projection.for_batch(concurrency)
    for ctx in DEFAULT_CONTEXTS:
        out.write(f"| {ctx} | {_mib(projection.per_sequence[ctx])} | {_mib(batch[ctx])} |\n")
    data = projection.as_dict()
    if rss_before is not None and rss_after is not None:
        out.write(
            f"\nMeasured: server RSS {_mib(rss_before)} MiB before the sweep, {_mib(rss_after)} MiB after "
            "(llama_cpp.server holds one sequence and allocates its cache for the whole context at load).\n"
        )
        data["server_rss_bytes"] = {"before_sweep": rss_before, "after_sweep": rss_after}
    out.write("\n")
    return data


def _batch_section(args: argparse.Namespace, artifact: Any, prompts: Sequence[str], out: TextIO) -> Any:
    from pytest_minerva import formats
    from pytest_minerva.backends import builtin_registry
    from pytest_minerva.backends.base import LoadOptions
    from pytest_minerva.serving.batching import DEFAULT_CONTEXTS, batch_sweep, kv_projection

    spec = builtin_registry().get("transformers")
    backend = spec.build(artifact, LoadOptions(threads=args.threads, n_ctx=args.n_ctx))
    try:
        ids = [backend.tokenize(p)[: args.prompt_tokens] for p in prompts[: max(args.batch)]]
        figures = batch_sweep(backend, ids, batch_sizes=args.batch, max_tokens=args.max_tokens, runs=args.runs)
        info = backend.info()
    finally:
        backend.close()
    out.write(
        printable(
            f"## Batched generation, transformers in-process ({info.get('dtype')}, {info.get('threads')} thread(s), "
            f"{args.runs} runs, medians)"
        )
        + "\n\n"
    )
    out.write("| batch | prefill ms | TpT ms (one step) | decode tok/s | efficiency | rows = alone |\n")
    out.write("|---:|---:|---:|---:|---:|---|\n")
    for f in figures:
        agree = "-" if f.rows_match_alone is None else ("yes" if f.rows_match_alone else "no")
        out.write(
            f"| {f.batch_size} | {f.prefill_ms:.1f} | {f.tpt_ms:.1f} | {f.decode_tps:.1f} | {_num(f.efficiency)} "
            f"| {agree} |\n"
        )
    data: dict[str, Any] = {"figures": [f.as_dict() for f in figures], "info": info}
    try:
        metadata = (artifact.summary or formats.verify(artifact.path)).metadata
        projection = kv_projection(metadata, "transformers", info)
    except MinervaError as exc:
        out.write(f"\n{printable(exc)}\n\n")
        return data
    out.write(f"\nKV cache (computed, {projection.cache_dtype}): {projection.formula}.\n\n")
    header = " | ".join(f"batch {b} MiB" for b in args.batch)
    out.write(f"| context | {header} |\n|---:|" + "---:|" * len(args.batch) + "\n")
    for ctx in DEFAULT_CONTEXTS:
        cells = " | ".join(_mib(projection.for_batch(b)[ctx]) for b in args.batch)
        out.write(f"| {ctx} | {cells} |\n")
    out.write("\n")
    data["kv"] = projection.as_dict()
    return data
