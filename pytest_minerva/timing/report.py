"""Markdown tables of a benchmark results document, in the layout of the reference reports.

Everything here renders a document as :mod:`pytest_minerva.storage.results` stores it,
so a saved JSON file prints the same tables as the run that wrote it. Every string in it
(model and engine names, error messages, methods) may come from a model file, an engine or
a hand-edited document, so each is shown through :func:`text` or :func:`cell`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_minerva.errors import printable
from pytest_minerva.timing.clock import HARNESS_CLOCK

#: Marks a figure that is not the harness clock's; a footnote under the table names its source.
NOT_HARNESS_CLOCK = "†"

LEGEND = (
    "Cells are median [interquartile range] over {runs} timed runs after {warmup} warm-up run(s) per "
    "scenario; ITL percentiles pool every inter-token latency of those runs. Standard deviations and "
    "every run are in the JSON."
)


def cell(value: Any) -> str:
    """``value`` as one markdown table cell: :func:`~pytest_minerva.errors.printable`, with ``|``
    escaped so it cannot split the row."""
    return printable(value).replace("|", "\\|")


def number(value: float | None) -> str:
    """A figure with about three significant digits: 1234, 123, 12.3, 1.23, 0.123."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def _cell(stats: Mapping[str, Any], figure: str) -> str:
    entry = stats.get(figure)
    if not entry:
        return "-"
    return f"{number(entry['median'])} [{number(entry['iqr'])}]"


def _source(bench: Mapping[str, Any], figure: str) -> str:
    """Where ``figure`` of ``bench`` comes from; a document from before provenance says nothing."""
    return str((bench.get("provenance") or {}).get(figure, HARNESS_CLOCK))


def _mark(bench: Mapping[str, Any], figure: str, shown: str) -> str:
    return f"{shown} {NOT_HARNESS_CLOCK}" if _source(bench, figure) != HARNESS_CLOCK else shown


def _figure(bench: Mapping[str, Any], figure: str) -> str:
    return _mark(bench, figure, _cell(bench["stats"], figure))


def provenance_notes(benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """One footnote per source other than the harness clock among ``benchmarks``' figures."""
    notes: dict[str, None] = {}
    for bench in benchmarks:
        if bench["error"] is not None:
            continue
        for figure, source in (bench.get("provenance") or {}).items():
            if source == HARNESS_CLOCK or figure not in _TABLE_FIGURES:
                continue
            why = bench.get("buffered") or "the harness took no receipts of its events"
            notes[printable(f"{NOT_HARNESS_CLOCK} {source}, not the harness clock: {bench['backend']} {why}.")] = None
    return list(notes)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return lines


#: The figures the scenario and sweep tables show.
_TABLE_FIGURES = ("ttft_ms", "tpt_ms", "itl_ms", "throughput_tps", "prefill_tps", "decode_tps")


def scenario_table(benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-backend table: one row per scenario."""
    header = (
        "Scenario",
        "Prompt",
        "TTFT ms",
        "TpT ms",
        "ITL p90/p99 ms",
        "Throughput t/s",
        "Prefill t/s",
        "Decode t/s",
        "Generated",
        "Runs",
    )
    rows = []
    for bench in benchmarks:
        name, prompt = bench["scenario"], str(bench["prompt_tokens"])
        if bench["error"] is not None:
            rows.append((name, prompt, f"error: {bench['error']}", *["-"] * 7))
            continue
        itl = bench.get("itl_ms") or {}
        rows.append(
            (
                name,
                prompt,
                _figure(bench, "ttft_ms"),
                _figure(bench, "tpt_ms"),
                _mark(bench, "itl_ms", f"{number(itl.get('p90'))} / {number(itl.get('p99'))}"),
                _figure(bench, "throughput_tps"),
                _figure(bench, "prefill_tps"),
                _figure(bench, "decode_tps"),
                str(bench["generate_tokens"]),
                str(len(bench["runs"])),
            )
        )
    return _table(header, rows)


def sweep_table(benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Context-length scaling: TTFT and decode speed per prompt length."""
    header = ("Context", "TTFT ms", "TpT ms", "Prefill t/s", "Decode t/s", "Generated", "Runs")
    rows = []
    for bench in benchmarks:
        if bench["error"] is not None:
            rows.append((str(bench["prompt_tokens"]), f"error: {bench['error']}", "-", "-", "-", "-", "-"))
            continue
        rows.append(
            (
                str(bench["prompt_tokens"]),
                _figure(bench, "ttft_ms"),
                _figure(bench, "tpt_ms"),
                _figure(bench, "prefill_tps"),
                _figure(bench, "decode_tps"),
                str(bench["generate_tokens"]),
                str(len(bench["runs"])),
            )
        )
    return _table(header, rows)


def breakdown_table(bench: Mapping[str, Any]) -> list[str]:
    rows = [(row["operation"], number(row["median_ms"]), row["source"]) for row in bench.get("breakdown") or []]
    return _table(("Operation", "Median ms", "Source"), rows) if rows else []


def roofline_line(backend: Mapping[str, Any], bandwidth: Mapping[str, Any] | None) -> str | None:
    roof, weights = backend.get("roofline"), backend.get("weights")
    if not roof or not weights:
        return None
    method = f" ({printable(bandwidth['method'])})" if bandwidth else ""
    return (
        f"Roofline: {number(roof['bandwidth_gb_per_s'])} GB/s measured read bandwidth{method} / "
        f"{size(roof['bytes_per_token'])} read per token (computed: {printable(weights['method'])}) = ceiling "
        f"{number(roof['ceiling_tokens_per_s'])} t/s; decode {number(roof['decode_tokens_per_s'])} t/s "
        f"({printable(backend.get('roofline_scenario'))}) is {roof['fraction'] * 100:.1f}% of it."
    )


def fidelity_line(backend: Mapping[str, Any]) -> str | None:
    fid = backend.get("fidelity")
    if not fid:
        return None
    sample = fid.get("engine_sample_ms_per_token")
    sampled = f"; llama.cpp's sampler took {number(sample)} ms/token of that" if sample is not None else ""
    counts = "" if fid["counts_match"] else " (WARNING: llama.cpp's token counts differ from the stream's)"
    return (
        f"llama.cpp fidelity over {fid['runs']} timed runs: decode {number(fid['harness_decode_tps'])} t/s "
        f"measured by the harness vs {number(fid['engine_decode_tps'])} t/s by llama.cpp's t_eval_ms, "
        f"overhead {fid['decode_overhead'] * 100:+.2f}%{sampled}; "
        f"prefill {number(fid['harness_prefill_tps'])} vs {number(fid['engine_prefill_tps'])} t/s, "
        f"overhead {fid['prefill_overhead'] * 100:+.2f}%{counts}."
    )


def memory_line(backend: Mapping[str, Any]) -> str:
    mem = backend.get("memory") or {}
    parts = [f"load {number(backend.get('load_s'))} s (+{size(mem.get('load_rss_bytes'))} RSS)"]
    if mem.get("peak_rss_bytes") is not None:
        parts.append(f"peak RSS {size(mem['peak_rss_bytes'])} ({printable(mem.get('peak_rss_method'))})")
    if mem.get("device_peak_bytes") is not None:
        method = printable(mem.get("device_peak_method"))
        parts.append(f"peak device memory {size(mem['device_peak_bytes'])} ({method})")
    return "Memory: " + "; ".join(parts) + "."


def kv_line(backend: Mapping[str, Any]) -> str | None:
    kv = backend.get("kv_cache")
    if not kv:
        return None
    parts = []
    if kv.get("computed_bytes_per_token") is not None:
        parts.append(f"{size(kv['computed_bytes_per_token'])}/token {printable(kv['computed_formula'])}")
    if kv.get("measured_bytes_per_token") is not None:
        parts.append(f"{size(kv['measured_bytes_per_token'])}/token measured: {printable(kv['measured_method'])}")
    if kv.get("note"):
        parts.append(printable(kv["note"]))
    return "KV cache: " + "; ".join(parts) + "." if parts else None


def backend_title(backend: Mapping[str, Any]) -> str:
    info = backend.get("info") or {}
    threads = f", {info['threads']} threads" if info.get("threads") else ""
    version = f" {info['version']}" if info.get("version") else ""
    quant = f" {backend['quant']}" if backend.get("quant") else ""
    unpinned = (backend.get("artifact") or {}).get("unpinned")
    pin = f" (UNPINNED: {unpinned})" if unpinned else ""
    return printable(
        f"### {backend['backend']}{version}: {backend['model']} {backend['format']}{quant} "
        f"on {backend['device']}{threads}{pin}"
    )


def _bounded(entry: Mapping[str, Any], name: str, spec: str, relation: str) -> str:
    """A numerics figure, and its profile bound in brackets where the profile has one."""
    value = f"{entry['figures'][name]:{spec}}"
    bounds = entry.get("bounds") or {}
    return f"{value} ({relation} {bounds[name]:{spec}})" if name in bounds else value


def numerics_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each measured pair's logits against its reference: the equivalence suite's figures, with the
    tolerance profile's bound under each where it has one."""
    rows = []
    for entry in entries:
        if entry["status"] != "ok":
            rows.append(
                [entry["candidate"], entry["reference"], f"{entry['status']}: {entry.get('reason')}", "", "", "", ""]
            )
            continue
        rows.append(
            [
                entry["candidate"],
                entry["reference"],
                _bounded(entry, "kl_mean", ".3g", "<="),
                _bounded(entry, "kl_max", ".3g", "<="),
                _bounded(entry, "top1_agreement", ".3f", ">="),
                _bounded(entry, "max_dlogit", ".3g", "<="),
                entry.get("profile") or "-",
            ]
        )
    header = ["backend", "against", "KL mean (nats)", "KL max (nats)", "top-1 agreement", "max |dlogit|", "profile"]
    return _table(header, rows)


def markdown(document: Mapping[str, Any]) -> str:
    """The whole report: per backend a table and its memory, KV, roofline and fidelity lines;
    then the cases that did not run, with the reason."""
    settings = document.get("settings", {})
    machine = document.get("machine_info", {})
    lines = [f"## minerva bench: {printable(settings.get('model', '?'))}", ""]
    cpu = machine.get("cpu_model", "unknown CPU")
    load = machine.get("load_average")
    load_text = f"; load average {', '.join(f'{x:.2f}' for x in load)} at start" if load else ""
    lines.append(printable(f"Machine: {cpu}, {machine.get('logical_cores', '?')} logical cores{load_text}."))
    lines.append(LEGEND.format(runs=settings.get("runs", "?"), warmup=settings.get("warmup", "?")))
    bandwidth = document.get("bandwidth")
    unavailable = []
    for backend in document.get("backends", []):
        if backend["status"] == "unavailable":
            unavailable.append(backend)
            continue
        benches = [b for b in document.get("benchmarks", []) if b["case_id"] == backend["case_id"]]
        named = [b for b in benches if not b["scenario"].startswith("sweep-")]
        swept = [b for b in benches if b["scenario"].startswith("sweep-")]
        lines += ["", backend_title(backend), ""]
        if backend["status"] in ("error", "crashed") and not benches:
            lines.append(printable(f"{backend['status'].capitalize()}: {backend['reason']}"))
            continue
        if named:
            lines += scenario_table(named)
        if swept:
            lines += ["", "Context-length sweep:", "", *sweep_table(swept)]
        notes = provenance_notes(benches)
        if notes:
            lines += ["", *notes]
        lines += ["", memory_line(backend)]
        for extra in (kv_line(backend), roofline_line(backend, bandwidth), fidelity_line(backend)):
            if extra:
                lines.append(extra)
        longest = max((b for b in named if b["error"] is None), key=lambda b: b["generate_tokens"], default=None)
        if longest is not None:
            lines += ["", printable(f"Timing breakdown ({longest['scenario']}):"), "", *breakdown_table(longest)]
    numerics = document.get("numerics") or []
    if numerics:
        lines += [
            "",
            "Numerics: each backend's logits against its reference on the equivalence suite's fixed prompts "
            "(3 x 48 positions, pooled); in brackets the tolerance profile's bound (fixtures/tolerances.toml).",
            "",
            *numerics_table(numerics),
        ]
    if unavailable:
        lines += ["", "Not run:"]
        lines += [printable(f"- {b['case_id']}: {b['reason']}") for b in unavailable]
    return "\n".join(lines) + "\n"
