"""``minerva calibrate``: measure every backend pair on real models and write the tolerance bounds.

For each selected model it loads the pairs the suite compares (cross-backend and quantization,
see :func:`pytest_minerva.matrix.pairs`), runs them on the fixed prompt set of
:mod:`pytest_minerva.equivalence.runner`, and stores one measurement per pair and prompt in the
profile that covers the pair. Bounds then follow from the profile's rule (worst measured value
times a factor), so every bound in ``fixtures/tolerances.toml`` has the measurements behind it.

Pairs listed as known divergences are measured and printed but not recorded: their engine is
wrong, and recording them would loosen the bound for every other pair.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from typing import Any, TextIO

from pytest_minerva.errors import ArtifactMissing, MinervaError, printable
from pytest_minerva.option_types import plain_text
from pytest_minerva.options import CACHE_DIR, MODEL, THREADS, TOLERANCES, Settings, add_cli_options
from pytest_minerva.session import build_session
from pytest_minerva.storage.paths import check_output_file
from pytest_minerva.timing.report import cell


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure backend pairs on real models and rewrite the tolerance bounds",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_cli_options(parser, "calibrate", MODEL, model={"action": "append"})
    parser.add_argument(
        "--profile",
        action="append",
        type=plain_text,
        default=None,
        metavar="NAME",
        help="record only these profiles; repeatable",
    )
    add_cli_options(parser, "calibrate", TOLERANCES)
    add_cli_options(parser, "calibrate", THREADS, CACHE_DIR)
    parser.add_argument("--dry-run", action="store_true", help="measure and print, write nothing")
    parser.set_defaults(func=cmd_calibrate)


def _session(args: argparse.Namespace) -> Any:
    return build_session(Settings.from_args(args))


def _label(case: Any) -> str:
    return f"{case.backend.name} on {case.model.name} {case.format_id} ({case.precision})"


def cmd_calibrate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from pytest_minerva.equivalence import runner
    from pytest_minerva.equivalence.calibration import record_measurements
    from pytest_minerva.equivalence.profiles import Measurement
    from pytest_minerva.equivalence.tolerances import default_tolerances_path, load_known_divergences, load_profiles

    out = out or sys.stdout
    if not args.dry_run:  # the file is rewritten at the end: refuse now rather than after measuring
        check_output_file(args.tolerances or default_tolerances_path())
    session = _session(args)
    divergences = load_known_divergences(args.tolerances)
    wanted = set(args.profile or [])
    collected: dict[str, list[Any]] = defaultdict(list)
    command = "minerva " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "minerva calibrate"
    versions = session.versions()
    out.write("| model | reference | candidate | prompt | profile | kl_mean | kl_max | top1 | max_dlogit |\n")
    out.write("|---|---|---|---|---|---|---|---|---|\n")
    try:
        for pair in session.pairs():
            ref_case, cand_case = pair.reference, pair.candidate
            skip = session.check_runnable(ref_case) or session.check_runnable(cand_case)
            if skip:
                out.write(f"<!-- skipped {printable(pair.id)}: {printable(skip)} -->\n")
                continue
            try:
                ref_art, cand_art = session.resolve(ref_case), session.resolve(cand_case)
            except ArtifactMissing as exc:
                out.write(f"<!-- skipped {printable(pair.id)}: {printable(exc)} -->\n")
                continue
            same = ref_art.same_weights_as(cand_art)
            profile = runner.profile_for(ref_case, cand_case, same, args.tolerances, calibrated=False)
            if wanted and profile.name not in wanted:
                continue
            known = [
                d for d in divergences if d.matches(ref_case.model.name, ref_case.backend.name, cand_case.backend.name)
            ]
            reference, candidate = session.backend(ref_case), session.backend(cand_case)
            for prompt in runner.prompts(reference):
                report = runner.compare(
                    reference,
                    candidate,
                    prompt,
                    metrics=profile.metrics,
                    with_generation=runner.needs_generation(profile),
                )
                values = {m: report.metric_value(m) for m in ("kl_mean", "kl_max", "top1_agreement", "max_dlogit")}
                note = " (known divergence: not recorded)" if known else ""
                out.write(
                    f"| {cell(ref_case.model.name)} | {cell(_label(ref_case))} | {cell(_label(cand_case))} "
                    f"| {cell(prompt.name)} | {cell(profile.name)}{note} | {values['kl_mean']:.3g} "
                    f"| {values['kl_max']:.3g} | {values['top1_agreement']:.3f} | {values['max_dlogit']:.3g} |\n"
                )
                if known:
                    continue
                collected[profile.name].append(
                    Measurement.from_report(
                        report,
                        profile.metrics,
                        model=ref_case.model.name,
                        reference=_label(ref_case),
                        candidate=_label(cand_case),
                        prompt_set=f"fixtures/prompts/{prompt.name}.txt[:{runner.PROMPT_TOKENS}]",
                        command=command,
                        versions=versions,
                    )
                )
    except MinervaError as exc:
        print(f"minerva calibrate: {printable(exc)}", file=sys.stderr)
        return 1
    finally:
        session.close()
    if not collected:
        print("minerva calibrate: no pair could be measured here (see the skipped lines)", file=sys.stderr)
        return 1
    measured_models = {m.model for ms in collected.values() for m in ms}
    profiles = load_profiles(args.tolerances)
    for name, measurements in sorted(collected.items()):
        # Measurements of models not measured in this run stay: calibrating one model
        # must not drop the evidence another model contributed to a shared profile.
        kept = [m for m in profiles[name].measurements if m.model not in measured_models]
        measurements = kept + measurements
        if args.dry_run:
            out.write(f"\nprofile {name}: {len(measurements)} measurement(s) (dry run: not written)\n")
            continue
        profile = record_measurements(name, measurements, path=args.tolerances)
        bounds = ", ".join(f"{k}={v:.3g}" for k, v in profile.bounds.items())
        out.write(f"\nprofile {name}: {len(measurements)} measurement(s); bounds {bounds}\n")
    return 0
