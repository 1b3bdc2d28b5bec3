"""``enclave-export``: request, list, show, withdraw and resubmit export requests from a notebook."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from enclave_export import client


def _print_request(r: dict[str, Any]) -> None:
    print(f"Export request {r['id']}  project {r['project']}  status {r['status']}  round {r['round']}")
    for f in r.get("files", []):
        checks = f.get("checks", {})
        print(
            f"  {f['path']}  v{f['version']}  {f['role']}  sha256 {f['sha256'][:16]}  checks: {checks.get('outcome')}"
        )
        for c in checks.get("results", []):
            if c["outcome"] != "pass":
                where = ""
                if c.get("cells"):
                    shown = ", ".join(f"row {x['row']} {x['column']}" for x in c["cells"][:5])
                    more = c.get("cell_total", 0) - min(5, len(c["cells"]))
                    where = f" [{shown}{f', and {more} more' if more > 0 else ''}]"
                print(f"    {c['outcome'].upper():6} {c['title']}: {c['message']}{where}")
    for c in r.get("comments", []):
        print(f"  comment from {c['author']} ({c['author_role']}): {c['text']}")
    if r.get("released"):
        print(f"  Released: download from {r['url']} in your browser.")


def _cmd_request(args: argparse.Namespace) -> Any:
    return client.request(
        args.paths,
        args.context,
        args.controls,
        supporting=args.supporting + args.acro,
        group=args.group,
        count_columns=_columns(args.count_columns),
        submit=not args.draft,
    )


def _columns(raw: str | None) -> list[str] | None:
    return [c.strip() for c in raw.split(",") if c.strip()] if raw else None


def _cmd_list(args: argparse.Namespace) -> Any:
    items = client.list_requests(args.status)
    if args.json:
        return items
    if not items:
        print("No export requests.")
    for r in items:
        checks = ", ".join(f"{n} {k}" for k, n in sorted(r.get("checks", {}).items()) if n)
        print(
            f"{r['id']}  {r['status']:<18}  {r['project']}  files {r['files']}  {checks}  created {r['created_at'][:16]}"
        )
    return None


def _cmd_resubmit(args: argparse.Namespace) -> Any:
    return client.resubmit(
        args.id,
        args.paths,
        context=args.context,
        controls=args.controls,
        supporting=args.supporting,
        group=args.group,
        count_columns=_columns(args.count_columns),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclave-export",
        description="Ask for files in /workspace to leave the enclave, through output checkers' review.",
    )
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")
    common = argparse.ArgumentParser(add_help=False)  # so that --json also works after the command
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the service's JSON answer"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("request", parents=[common], help="create (and submit) an export request")
    p.add_argument("paths", nargs="+", help="files to export, relative to here or absolute under /workspace")
    p.add_argument("--context", required=True, help="what these outputs are and how they were made")
    p.add_argument("--controls", required=True, help="disclosure controls applied (suppression, rounding...)")
    p.add_argument("--group", default="main", help="file group name (default: main)")
    p.add_argument(
        "--supporting",
        action="append",
        default=[],
        metavar="PATH",
        help="a file for the checkers only, never released (repeatable)",
    )
    p.add_argument(
        "--acro",
        action="append",
        default=[],
        metavar="RESULTS_JSON",
        help="ACRO's results.json from your session, shown to checkers (never released)",
    )
    p.add_argument("--count-columns", help="comma-separated names of the count columns in the tables")
    p.add_argument("--draft", action="store_true", help="create it PENDING; submit later with resubmit")
    p.set_defaults(func=_cmd_request)

    p = sub.add_parser("list", parents=[common], help="list your export requests for this project")
    p.add_argument("--status", help="only these statuses (comma-separated)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="show one request, its check results and comments")
    p.add_argument("id")
    p.set_defaults(func=lambda a: client.show(a.id))

    p = sub.add_parser("withdraw", parents=[common], help="withdraw a pending or returned request")
    p.add_argument("id")
    p.set_defaults(func=lambda a: client.withdraw(a.id))

    p = sub.add_parser("resubmit", parents=[common], help="add new file versions (optional) and submit again")
    p.add_argument("id")
    p.add_argument("paths", nargs="*", help="new versions of files, or extra files")
    p.add_argument("--context")
    p.add_argument("--controls")
    p.add_argument("--group", default="main")
    p.add_argument("--supporting", action="append", default=[], metavar="PATH")
    p.add_argument("--count-columns")
    p.set_defaults(func=_cmd_resubmit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except client.ExportClientError as exc:
        print(f"enclave-export: {exc}", file=sys.stderr)
        return 1
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    elif isinstance(result, dict) and "id" in result:
        _print_request(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
