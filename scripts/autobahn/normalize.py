"""Normalize a kosoku run, check it, and compare it with the committed expectation.

Run by scripts/autobahn.sh with the interpreter of target/autobahn-venv (it imports
kosoku to learn the case list). Steps:

1. Read kosoku's `<reports>/index.json` ({agent: {case id: {"behavior", "behaviorClose",
   ...}}}; the agent is the server's `Server` header, or host:port when it sends none)
   and reduce it to {case id: {"behavior": ..., "behaviorClose": ...}}.
2. Check that exactly the selected cases ran: kosoku's own case list
   (`kosoku.cases.CASES`) minus the `--exclude` globs. For kosoku 0.1.0 that is 517
   cases, minus 90 in 12.* and 126 in 13.* (permessage-deflate) = 301, the same as the
   original Autobahn TestSuite; EXPECTED_CASE_COUNT pins that number so a pin bump
   that changes the suite is noticed.
3. Write the results, sorted by case id (numerically: 1.2.10 after 1.2.9), one case per
   line, to `--results`; with `--update` also to `--expected`.
4. Fail on any case whose behavior is not OK, NON-STRICT or INFORMATIONAL, or whose
   behaviorClose is not OK or INFORMATIONAL (kosoku's own pass rule, which
   also makes it exit 1), whatever the expectation says: a committed expectation
   can never bless a failure.
5. Without `--update`, fail on any difference from `--expected`, printing each
   differing case. An expected value may also be a list of accepted values, e.g.
   `"behavior": ["OK", "NON-STRICT"]`, for a case whose verdict depends on a benign
   race (`--update` keeps such a list while the new value is in it).
6. Print one summary line: cases run, counts by behavior and behaviorClose, seconds.

Exit status: 0 when everything passed, 1 on any failure, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import sys
from pathlib import Path

#: Non-compression cases in kosoku 0.1.0 (517 total - 90 in 12.* - 126 in 13.*).
EXPECTED_CASE_COUNT = 301
#: Verdicts that pass (kosoku's `CaseResult.passed`).
ACCEPTABLE_BEHAVIOR = ("OK", "NON-STRICT", "INFORMATIONAL")
ACCEPTABLE_CLOSE = ("OK", "INFORMATIONAL")
FIELDS = ("behavior", "behaviorClose")


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]


def selected_cases(excludes: list[str]) -> list[str]:
    from kosoku.cases import CASES

    return sorted(
        (c for c in CASES if not any(fnmatch.fnmatchcase(c, g) for g in excludes)),
        key=case_key,
    )


def dump(results: dict[str, dict], path: Path) -> None:
    """Sorted by case id, one case per line, so that diffs read case by case."""
    lines = [
        f"  {json.dumps(cid)}: {json.dumps(results[cid], sort_keys=True)}"
        for cid in sorted(results, key=case_key)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    os.replace(tmp, path)


def load_index(reports: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """({case id: {"behavior", "behaviorClose"}}, {case id: its HTML report})."""
    index_path = reports / "index.json"
    if not index_path.is_file():
        raise SystemExit(
            f"autobahn: kosoku produced no results ({index_path} missing): "
            "it did not run to the end (see its log above)"
        )
    index = json.loads(index_path.read_text())
    results: dict[str, dict[str, str]] = {}
    pages: dict[str, str] = {}
    for agent, cases in index.items():
        for cid, entry in cases.items():
            if cid in results:
                raise SystemExit(f"autobahn: case {cid} reported twice (agent {agent!r})")
            results[cid] = {f: str(entry[f]) for f in FIELDS}
            page = reports / str(entry.get("reportfile", "index.json"))
            pages[cid] = str(page.with_suffix(".html"))
    return results, pages


def accepted(expected_value: object) -> list[str]:
    return list(expected_value) if isinstance(expected_value, list) else [str(expected_value)]


def some(ids: list[str], limit: int = 20) -> str:
    return " ".join(ids[:limit]) + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def fmt(entry: dict | None) -> str:
    if entry is None:
        return "<absent>"
    return " ".join(
        f"{f}={'|'.join(accepted(entry[f])) if f in entry else '<absent>'}" for f in FIELDS
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=Path, required=True, help="kosoku -o directory")
    ap.add_argument("--results", type=Path, required=True, help="normalized output")
    ap.add_argument("--expected", type=Path, required=True, help="committed expectation")
    ap.add_argument("--exclude", action="append", default=[], help="glob passed to kosoku -x")
    ap.add_argument("--update", action="store_true", help="write --expected from this run")
    ap.add_argument("--kosoku-rc", type=int, required=True, help="kosoku's exit status")
    ap.add_argument("--seconds", type=float, required=True, help="kosoku's run time")
    args = ap.parse_args()

    problems: list[str] = []
    results, pages = load_index(args.reports)
    if not results:
        raise SystemExit("autobahn: kosoku produced an empty index.json")

    # 2. exactly the selected cases, and as many as the pinned suite has
    selection = selected_cases(args.exclude)
    if len(selection) != EXPECTED_CASE_COUNT:
        problems.append(
            f"kosoku's suite minus {args.exclude} has {len(selection)} cases, "
            f"not {EXPECTED_CASE_COUNT}: was the pin changed? review and update "
            "EXPECTED_CASE_COUNT in scripts/autobahn/normalize.py"
        )
    missing = sorted(set(selection) - set(results), key=case_key)
    extra = sorted(set(results) - set(selection), key=case_key)
    if missing:
        problems.append(f"{len(missing)} selected cases have no result: {some(missing)}")
    if extra:
        problems.append(f"{len(extra)} cases ran that were not selected: {some(extra)}")
    if len(results) < EXPECTED_CASE_COUNT:
        problems.append(
            f"only {len(results)} cases ran, fewer than the {EXPECTED_CASE_COUNT} "
            "non-compression cases"
        )

    # 3. write
    dump(results, args.results)
    if args.update:
        old = json.loads(args.expected.read_text()) if args.expected.is_file() else {}
        new = {}
        for cid, res in results.items():
            new[cid] = {}
            for f in FIELDS:
                prev = old.get(cid, {}).get(f)
                keep = isinstance(prev, list) and res[f] in prev
                new[cid][f] = prev if keep else res[f]
        dump(new, args.expected)
        print(f"autobahn: wrote {args.expected} ({len(new)} cases)", file=sys.stderr)

    # 4. never bless a failure
    bad = [
        cid
        for cid in sorted(results, key=case_key)
        if results[cid]["behavior"] not in ACCEPTABLE_BEHAVIOR
        or results[cid]["behaviorClose"] not in ACCEPTABLE_CLOSE
    ]
    for cid in bad:
        print(
            f"autobahn: case {cid} failed: behavior={results[cid]['behavior']} "
            f"behaviorClose={results[cid]['behaviorClose']} "
            f"({pages[cid]})",
            file=sys.stderr,
        )
    if bad:
        problems.append(
            f"{len(bad)} cases have a behavior outside {'/'.join(ACCEPTABLE_BEHAVIOR)} "
            f"or a behaviorClose outside {'/'.join(ACCEPTABLE_CLOSE)}"
        )

    # kosoku's exit status must agree: 0 = all passed, 1 = some case failed.
    if args.kosoku_rc == 1 and not bad:
        problems.append("kosoku exited 1 although every case passed: kosoku error (see its log)")
    elif args.kosoku_rc == 0 and bad:
        problems.append("kosoku exited 0 although some cases failed")
    elif args.kosoku_rc not in (0, 1):
        # Seen once in development: SIGABRT (134) at exit, after complete reports were
        # written, against a server that left connections hanging. The reports are
        # written only after every case has finished, so they are complete here.
        print(
            f"autobahn: WARNING: kosoku exited {args.kosoku_rc} after writing "
            "complete reports; judging the reports",
            file=sys.stderr,
        )

    # 5. compare
    if not args.update:
        if not args.expected.is_file():
            problems.append(
                f"{args.expected} does not exist: generate it from a ringpush build "
                "with `scripts/autobahn.sh --update <ringpush-binary>`, review it, commit it"
            )
        else:
            expected = json.loads(args.expected.read_text())
            diffs = []
            for cid in sorted(set(expected) | set(results), key=case_key):
                exp, act = expected.get(cid), results.get(cid)
                if (
                    exp is None
                    or act is None
                    or any(act[f] not in accepted(exp.get(f)) for f in FIELDS)
                ):
                    diffs.append(cid)
                    print(
                        f"autobahn: case {cid}: expected {fmt(exp)}, actual {fmt(act)}",
                        file=sys.stderr,
                    )
            if diffs:
                problems.append(
                    f"{len(diffs)} cases differ from {args.expected} "
                    "(if the change is intended: rerun with --update, review, commit)"
                )

    # 6. summary
    def counts(field: str) -> str:
        c = collections.Counter(r[field] for r in results.values())
        return " ".join(f"{k}={v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))

    print(
        f"autobahn: {len(results)} cases run in {args.seconds:.1f} s; "
        f"behavior {counts('behavior')}; behaviorClose {counts('behaviorClose')}; "
        f"{'FAIL' if problems else 'pass'}",
        flush=True,
    )
    for p in problems:
        print(f"autobahn: FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
