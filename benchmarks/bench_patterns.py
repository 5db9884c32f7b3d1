"""Engines for source patterns, measured on every corpus pattern (issue 10, item 2; never part of the tests).

Routes, each against today's ``re`` (the reference, processing.md §7.5):

* **re2**: ``google-re2`` where it compiles the pattern, the ``regex`` module with a timeout (the bounded
  fallback) where it does not (lookaround, backreferences). Measured only when ``google-re2`` is installed
  (``pip install google-re2``; it is not a dependency of the project).
* **regex**: the ``regex`` module, ``regex.V0`` (its ``re``-compatible behaviour), ``timeout=`` on every call.
* **worker**: ``re`` in a separate process, one column per request, killed when a column exceeds its budget.
* **re+tick** (chosen, :mod:`openaddr.patterns`): ``re`` in-process, each column under a periodic ``ITIMER_REAL``
  tick that stops a value matched for a whole budget.

Printed: how many corpus patterns each route compiles; how many patterns give another result than ``re`` on the
132 acceptance cases' input values and on probes (non-ASCII digits and spaces, a trailing newline before ``$``,
``½``, combining accents, the four control characters ``re`` counts as space); the time to match a column of
1,000,000 address texts; the time each route takes to stop ``(a+)+$`` and ``(a|aa)+$``; and ``Conform.apply`` over
1,000,000 rows with the regexp of ``make bench``, unbounded against bounded.

Usage::

    python benchmarks/bench_patterns.py [--rows 1000000] [--repeat 5] [--budget 1.0] [--corpus DIR]
        [--no-equality] [--no-speed] [--no-hangs] [--baseline DIR]

``--baseline DIR`` also times ``openaddr conform`` on ``make bench``'s data against older code exported to DIR::

    git archive <commit> openaddr | tar -x -C /tmp/base && python benchmarks/bench_patterns.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import generate
import regex

from openaddr.conform import Conform, convert_replacement
from openaddr.errors import PatternTimeout
from openaddr.patterns import bounded_map

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

try:
    import re2
except ImportError:
    re2 = None
try:
    import psutil
except ImportError:  # the bench dependency group installs it; without it the worker's CPU is not counted
    psutil = None

_LOOKAROUND = re.compile(r"\(\?<?[=!]")

#: Hand-made probes; every acceptance input is also probed with a trailing newline, no-break spaces and
#: Arabic-Indic digits.
PROBES = [
    "١٢٣ Main St",
    "१२३ MG Road",
    "１２３ Main St",
    "123\u00a0Main St",
    "123\u2003Main\u3000St",
    "123\u202fMain St",
    "123 Main St\n",
    "123 MAIN ST APT 4\n",
    "12345\n",
    "12345-6789\n",
    "Main St\n",
    "123 Main St\r\n",
    "line1\nline2",
    "12½ Main St",
    "Flat 2³",
    "Cafe\u0301 Street 5",
    "5 Rue de l'E\u0301glise",
    "123\x1cMain St",
    "123\x1fMain St",
    "\u180eMain",
    "A\u200dB 7",
    "Straße 12",
    "STRASSE 12",
    "İstiklal Cd. 5",
    "\u212a 12",
    "ſt 3",
    "",
    " ",
    "\t123\t",
    "123 N MAIN ST",
    "123-1/2 MAIN ST",
    "123 1/2 MAIN ST UNIT 3B",
    "UNIT 3B",
    "# 12",
    "ул. Ленина, д. 5, кв. 12",
    "г. Минск, пр. Независимости, д.4",
    "Nám. Míru 12/3, Praha",
    "č.p. 1234, Brno",
    "12 SEEDORFUR",
    "40 MAIN ST, TEXAS CITY, TX 77590",
    "3 OAK DR",
]


# -- collecting -------------------------------------------------------------------------------------------------


def collect(corpus: Path) -> tuple[list[tuple[str, str | None]], int, int, int, list[str]]:
    """Distinct (pattern, replace) pairs, pattern uses, lookaround uses, acceptance cases and their input values."""
    uses: Counter[tuple[str, str | None]] = Counter()
    cases = 0
    inputs: set[str] = set()

    def walk(node: Any) -> None:
        nonlocal cases
        if isinstance(node, dict):
            if node.get("function") == "regexp" and isinstance(node.get("pattern"), str):
                replace = node.get("replace")
                uses[(node["pattern"], replace if isinstance(replace, str) and replace else None)] += 1
            tests = node.get("acceptance-tests")
            if isinstance(tests, list):
                for case in tests:
                    cases += 1
                    for value in (case.get("inputs") or {}).values():
                        inputs.add(value if isinstance(value, str) else "" if value is None else str(value))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(corpus.rglob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    lookaround = sum(n for (p, _), n in uses.items() if _LOOKAROUND.search(p))
    pairs = sorted(uses, key=lambda pair: (-uses[pair], pair[0], pair[1] or ""))
    return pairs, sum(uses.values()), lookaround, cases, sorted(inputs)


def probes(inputs: list[str]) -> list[str]:
    """The hand-made probes, then each acceptance input with a newline, no-break spaces, Arabic-Indic digits."""
    digits = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    out = list(PROBES)
    for value in inputs:
        out += [value + "\n", value.replace(" ", "\u00a0"), value.translate(digits)]
    return list(dict.fromkeys(out))


# -- engines: a (pattern, replace) pair becomes a function of one value, with the conform's semantics ---------


def _search_groups(search: Callable[[str], Any]) -> Callable[[str], str]:
    def fn(value: str) -> str:
        match = search(value)
        return "".join(g or "" for g in match.groups()) if match else ""

    return fn


def build_re(pattern: str, replace: str | None) -> Callable[[str], str]:
    compiled = re.compile(pattern)
    if replace is None:
        return _search_groups(compiled.search)
    template = convert_replacement(replace)
    return lambda value: compiled.sub(template, value)


def build_regex(pattern: str, replace: str | None, budget: float) -> Callable[[str], str]:
    compiled = regex.compile(pattern, regex.V0)
    if replace is None:
        return _search_groups(lambda value: compiled.search(value, timeout=budget))
    template = convert_replacement(replace)
    return lambda value: compiled.sub(template, value, timeout=budget)


def build_re2(pattern: str, replace: str | None, budget: float) -> tuple[Callable[[str], str], bool]:
    """RE2 where it compiles the pattern, else the bounded ``regex`` fallback; True when RE2 took it."""
    try:
        compiled = re2.compile(pattern)
    except Exception:
        return build_regex(pattern, replace, budget), False
    if replace is None:
        return _search_groups(compiled.search), True
    template = convert_replacement(replace)
    return (lambda value: compiled.sub(template, value)), True


def _safe(fn: Callable[[str], str], value: str) -> str:
    try:
        return fn(value)
    except Exception as exc:
        return f"<{type(exc).__name__}>"


# -- the killable worker ----------------------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    cache: dict[tuple[str, str | None], Callable[[str], str]] = {}
    while True:
        request = conn.recv()
        if request is None:
            return
        pattern, replace, values = request
        fn = cache.get((pattern, replace))
        if fn is None:
            fn = cache[(pattern, replace)] = build_re(pattern, replace)
        conn.send(list(map(fn, values)))


class Worker:
    """``re`` in a child process; a column that takes longer than ``budget`` kills it (and a new one starts)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self._start()

    def _start(self) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(target=_serve, args=(child,), daemon=True)
        self.process.start()

    def map(self, pattern: str, replace: str | None, values: list[str]) -> list[str]:
        self.conn.send((pattern, replace, values))
        if not self.conn.poll(self.budget):
            self.process.kill()
            self.process.join()
            self._start()
            raise TimeoutError(pattern)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


# -- measuring --------------------------------------------------------------------------------------------------


def equality(
    pairs: list[tuple[str, str | None]], acceptance: list[str], probe_values: list[str], budget: float
) -> None:
    routes: dict[str, Callable[[str, str | None], Callable[[str], str]]] = {
        "regex V0": lambda p, r: build_regex(p, r, budget)
    }
    re2_taken = 0
    if re2 is not None:

        def re2_route(p: str, r: str | None) -> Callable[[str], str]:
            nonlocal re2_taken
            fn, took = build_re2(p, r, budget)
            re2_taken += took
            return fn

        routes["re2 + regex fallback"] = re2_route
    print(f"\n## Equality with re ({len(pairs)} distinct pattern/replace pairs)\n")
    print(
        f"Inputs: {len(acceptance)} distinct input values of the acceptance cases; {len(probe_values)} probes.\n"
    )
    print(
        "| route | compiled | patterns differing: acceptance / probes | results differing: acceptance / probes |"
    )
    print("|---|---:|---:|---:|")
    print(f"| re (today) | {len(pairs)} | 0 / 0 | 0 / 0 |")
    examples: dict[str, dict[str, str]] = {}
    for name, build in routes.items():
        compiled = 0
        bad_patterns = [set(), set()]
        bad_results = [0, 0]
        for pattern, replace in pairs:
            reference = build_re(pattern, replace)
            try:
                fn = build(pattern, replace)
            except Exception:
                continue
            compiled += 1
            for kind, values in enumerate((acceptance, probe_values)):
                for value in values:
                    want, got = _safe(reference, value), _safe(fn, value)
                    if want != got:
                        bad_patterns[kind].add((pattern, replace))
                        bad_results[kind] += 1
                        shown = examples.setdefault(name, {})
                        if value not in shown and len(shown) < 10:  # one example per differing input
                            shown[value] = f"{pattern!r} on {value!r}: re {want!r}, {name} {got!r}"
        extra = f" (RE2 {re2_taken}, fallback {compiled - re2_taken})" if name.startswith("re2") else ""
        print(
            f"| {name} | {compiled}{extra} | {len(bad_patterns[0])} / {len(bad_patterns[1])} "
            f"| {bad_results[0]} / {bad_results[1]} |"
        )
    print("| worker (re) | all | 0 / 0 (same engine) | 0 / 0 |")
    print(f"| re+tick (chosen) | {len(pairs)} | 0 / 0 (same engine) | 0 / 0 |")
    if re2 is None:
        print("\n(google-re2 not installed: the RE2 route was not measured)")
    for name, lines in examples.items():
        print(f"\nExamples, {name} (one per input value, first ten values):")
        for line in lines.values():
            print(f"  {line}")


def classes() -> None:
    """Code points where ``regex`` V0's ``\\s``, ``\\w``, ``\\d`` differ from ``re``'s (RE2's are ASCII)."""
    text = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    print("\n## Character classes over all code points: re against regex V0\n")
    print("| class | re | regex | only re | only regex |")
    print("|---|---:|---:|---:|---:|")
    for cls in (r"\s", r"\w", r"\d"):
        ours = set(re.findall(cls, text))
        theirs = set(regex.findall(cls, text, flags=regex.V0))
        only = sorted(ours - theirs)[:4]
        shown = " ".join(f"U+{ord(c):04X}" for c in only)
        print(
            f"| `{cls}` | {len(ours)} | {len(theirs)} | {len(ours - theirs)} ({shown}…) | {len(theirs - ours)} |"
        )


def column(rows: int, seed: int = 20250101) -> list[str]:
    """``rows`` full addresses like ``generate.py``'s FULLADDR (``123 N MAIN ST APT 4``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        parts = [str(rng.randint(1, 29999)) + rng.choice(["", "", "", "", "A", " 1/2"])]
        if rng.random() < generate.PREDIR_SHARE:
            parts.append(rng.choice(generate.PREDIRS))
        parts.append(rng.choice(generate.STREET_NAMES))
        parts.append(rng.choice(generate.STREET_TYPES))
        if rng.random() < generate.UNIT_SHARE:
            parts.append(rng.choice(generate.UNIT_PREFIXES) + str(rng.randint(1, 400)))
        out.append(" ".join(parts))
    return out


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its live children (the worker route's process)."""
    total = time.process_time()
    if psutil is not None:
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def _interleaved(runs: list[Callable[[], object] | None], repeat: int) -> list[float]:
    """Least CPU seconds of each run, the runs taking turns.

    CPU time rather than wall time: on a loaded machine the wall time of the same run varies by a factor of two,
    and the worker route's cost is in its child process.
    """
    best = [float("inf") if run is not None else float("nan") for run in runs]
    for _ in range(repeat):
        for index, run in enumerate(runs):
            if run is not None:
                started = _cpu_seconds()
                run()
                best[index] = min(best[index], _cpu_seconds() - started)
    return best


def speed(pairs: list[tuple[str, str | None]], values: list[str], budget: float, repeat: int) -> None:
    chosen = [("^(\\S+)\\s", None)] + [pair for pair in pairs if not _LOOKAROUND.search(pair[0])][:3]
    chosen += [pair for pair in pairs if _LOOKAROUND.search(pair[0])][:2]
    print(
        f"\n## Speed: one column of {len(values):,} address texts, CPU seconds (least of {repeat}, interleaved)\n"
    )
    header = ["re", "re+tick", "regex", "regex timeout", "worker"] + (["re2"] if re2 is not None else [])
    print("| pattern | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    worker = Worker(budget * 100)
    batch = 50_000
    for pattern, replace in chosen:
        fn = build_re(pattern, replace)
        compiled_regex = regex.compile(pattern, regex.V0)
        if replace is None:
            plain_regex = _search_groups(compiled_regex.search)
        else:
            template = convert_replacement(replace)
            plain_regex = lambda value, c=compiled_regex, t=template: c.sub(t, value)  # noqa: E731
        timed_regex = build_regex(pattern, replace, budget)
        runs: list[Callable[[], object]] = [
            lambda f=fn: list(map(f, values)),
            lambda f=fn: bounded_map(f, values, budget, lambda: "timeout"),
            lambda f=plain_regex: list(map(f, values)),
            lambda f=timed_regex: list(map(f, values)),
            lambda p=pattern, r=replace: [
                x for i in range(0, len(values), batch) for x in worker.map(p, r, values[i : i + batch])
            ],
        ]
        if re2 is not None:
            fn2, took = build_re2(pattern, replace, budget)
            runs.append((lambda f=fn2: list(map(f, values))) if took else None)
        row = _interleaved(runs, repeat)
        shown = pattern if len(pattern) <= 40 else pattern[:37] + "..."
        print(
            f"| `{shown}`{' → ' + repr(replace) if replace else ''} | "
            + " | ".join(f"{t:.2f}" for t in row)
            + " |"
        )
    worker.close()
    print("\n(re2: nan where RE2 cannot compile the pattern and the regex fallback would run)")


def hangs(budget: float) -> None:
    cases = [("(a+)+$", "a" * 40 + "!"), ("(a|aa)+$", "a" * 100_000 + "!"), ("(a|aa)+$", "a" * 5_000 + "!")]
    print(f"\n## Catastrophic patterns, budget {budget:g} s: seconds until the match ends or is stopped\n")
    print("| pattern | value | re+tick | regex timeout | worker | re2 |")
    print("|---|---|---:|---:|---:|---:|")
    worker = Worker(budget)
    for pattern, value in cases:
        row = []
        fn = build_re(pattern, None)
        started = time.perf_counter()
        try:
            bounded_map(fn, [value], budget, lambda: "timeout")
            row.append(f"{time.perf_counter() - started:.2f} (ended)")
        except PatternTimeout:
            row.append(f"{time.perf_counter() - started:.2f} (stopped)")
        started = time.perf_counter()
        try:
            build_regex(pattern, None, budget)(value)
            row.append(f"{time.perf_counter() - started:.2f} (ended)")
        except TimeoutError:
            row.append(f"{time.perf_counter() - started:.2f} (stopped)")
        started = time.perf_counter()
        try:
            worker.map(pattern, None, [value])
            row.append(f"{time.perf_counter() - started:.2f} (ended)")
        except TimeoutError:
            row.append(f"{time.perf_counter() - started:.2f} (stopped)")
        if re2 is not None:
            started = time.perf_counter()
            build_re2(pattern, None, budget)[0](value)
            row.append(f"{time.perf_counter() - started:.4f} (ended)")
        else:
            row.append("-")
        print(f"| `{pattern}` | `a`×{len(value) - 1} + `!` | " + " | ".join(row) + " |")
    worker.close()


def conform_speed(values: list[str], repeat: int) -> None:
    """``Conform.apply`` over ``values`` with the conform of ``make bench``; the regexp bounded or not."""
    spec = {
        "number": {"function": "regexp", "field": "FULLADDR", "pattern": "^(\\S+)\\s"},
        "street": "FULLADDR",
    }
    bounded = Conform(spec, "addresses", label="bench")
    unbounded = Conform(spec, "addresses", label="bench")
    for _, node in unbounded.values:
        if hasattr(node, "run"):
            node.run = lambda fn, vals: list(map(fn, vals))
    columns = {"FULLADDR": values}
    times = _interleaved(
        [lambda: unbounded.apply(columns, len(values)), lambda: bounded.apply(columns, len(values))], repeat
    )
    print(
        f"\n## Conform.apply, {len(values):,} rows, regexp `^(\\S+)\\s` (CPU seconds, least of {repeat}, interleaved)\n"
    )
    print(f"unbounded {times[0]:.3f} s, bounded {times[1]:.3f} s: {100 * (times[1] / times[0] - 1):+.1f} %")


def conform_runs(baseline: Path, rows: int, repeat: int) -> None:
    """``openaddr conform`` on ``make bench``'s data (its source files), this tree against ``baseline``.

    ``baseline`` is an exported tree of the code before the change (``git archive <commit> openaddr | tar -x -C
    DIR``), put first on ``PYTHONPATH``. Runs alternate; each reports wall seconds and the CPU seconds of the whole
    run (``RUSAGE_CHILDREN``: the command and its forked workers).
    """
    import resource
    import subprocess

    import bench_conform

    root = Path("bench-out")
    sources = root / "sources" / "bench"
    cases = {
        "shapefile": bench_conform.write_source(
            sources / "shapefile.json", "shapefile", "https://example.com/a.zip"
        ),
        "csv": bench_conform.write_source(sources / "csv.json", "csv", "https://example.com/a.csv"),
    }
    data = generate.ensure(root, rows)
    inputs = {"shapefile": data["shp"], "csv": data["csv"]}
    command = bench_conform.openaddr_command()
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(repeat):
        for case, source in cases.items():
            for tree in ("baseline", "this"):
                env = dict(os.environ)
                if tree == "baseline":
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline), env.get("PYTHONPATH")]))
                out = root / "runs" / f"patterns-{tree}-{case}"
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                cmd = [*command, "conform", str(source), str(inputs[case]), "--layer", "addresses"]
                cmd += ["--fingerprint", "0" * 32, "--out", str(out)]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                old = best.get((tree, case), (float("inf"), float("inf")))
                best[(tree, case)] = (min(old[0], wall), min(old[1], cpu))
    print(f"\n## openaddr conform, {rows:,} rows, conform of make bench (least of {repeat}, alternating)\n")
    print("| case | baseline wall / CPU s | this wall / CPU s | CPU change |")
    print("|---|---:|---:|---:|")
    for case in cases:
        (bw, bc), (tw, tc) = best[("baseline", case)], best[("this", case)]
        print(f"| {case} | {bw:.2f} / {bc:.2f} | {tw:.2f} / {tc:.2f} | {100 * (tc / bc - 1):+.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path(os.environ.get("OPENADDR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--corpus", type=Path, default=shared / "corpus" / "sources")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-equality", action="store_true", help="skip the equality table")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed tables")
    parser.add_argument("--no-hangs", action="store_true", help="skip the catastrophic patterns")
    parser.add_argument(
        "--baseline", type=Path, help="also time openaddr conform against this exported tree of older code"
    )
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        parser.error(f"no corpus at {args.corpus}: set OPENADDR_SHARED or pass --corpus")
    warnings.simplefilter("ignore", FutureWarning)  # re's "possible nested set" on some corpus patterns
    pairs, uses, lookaround, cases, inputs = collect(args.corpus)
    patterns = {p for p, _ in pairs}
    print(f"# Source patterns (regex {regex.__version__}, google-re2 {'yes' if re2 else 'not installed'})\n")
    print(
        f"Corpus: {uses} regexp uses, {lookaround} with lookaround; {len(patterns)} distinct patterns, "
        f"{len(pairs)} distinct pattern/replace pairs; {cases} acceptance cases."
    )
    if not args.no_equality:
        equality(pairs, inputs, probes(inputs), args.budget)
        classes()
    if not args.no_speed:
        values = column(args.rows)
        speed(pairs, values, args.budget, args.repeat)
        conform_speed(values, args.repeat)
    if not args.no_hangs:
        hangs(args.budget)
    if args.baseline is not None:
        conform_runs(args.baseline.resolve(), args.rows, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
