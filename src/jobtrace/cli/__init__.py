"""``jobtrace``: the command line over the lineage store.

    jobtrace runs                      the latest runs and their health
    jobtrace tree ID                   the run per stage, stuck ⚠ and failing ✗ stages marked
    jobtrace stats ID                  the per-stage table (depth, job, state, count)
    jobtrace children ID               a parent's done / total, crashed children with their args
    jobtrace ancestors ID | why ID     where a job hangs, and what failed first around it
    jobtrace diff A B                  two runs stage by stage
    jobtrace export ID --format csv    a tree as JSON or CSV
    jobtrace web [--port 8080]         a dashboard of the same, linking into the traces
    jobtrace reap | db upgrade | demo  maintenance, and the scenario-1 demo

Every read command takes ``--json``; an ID may be a unique prefix (``7d1e…``). See
``docs/cli.md``.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence

from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from jobtrace.cli.commands import CliError, Context, build_parser
from jobtrace.cli.render import ambiguous_message
from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import AmbiguousJobIdError, JobNotFoundError

__all__ = ["main"]


def _demo(database_url: str | None, argv: list[str]) -> int:
    """``jobtrace demo``: the demo (which takes every argument), then its run's tree and stats."""
    from jobtrace import demo

    url = ["--database-url", database_url] if database_url else []
    done = demo.run([*url, *argv])
    if done.root_id is None:
        return done.code
    url = ["--database-url", done.database_url] if done.database_url else []
    sys.stdout.write("\n")
    # The run lasted seconds: a stage that made no progress at all during it is stuck (a
    # millisecond without progress; the option takes more than 0 seconds).
    for command in ("tree", "stats"):
        main([*url, command, done.root_id, "--stuck-after", "0.001"])
    return done.code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``jobtrace`` command and return its exit status (never raises for user errors)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command == "demo":
            return _demo(args.database_url, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit:  # argparse: --help, or a usage error already printed
        return exit.code if isinstance(exit.code, int) else 2
    if args.handler is None:
        parser.print_help(sys.stderr)
        return 2
    _tolerate_unencodable(sys.stdout)
    ctx = Context(args)
    try:
        return int(args.handler(ctx))
    except JobNotFoundError as error:
        return _fail(f"no job {error.job_id!r} in the lineage store at {ctx.safe_url}")
    except AmbiguousJobIdError as error:
        return _fail(ambiguous_message(error))
    except CliError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (`| head`): no message, no traceback
        return 1
    except Exception as error:
        if not _is_store_error(error):
            raise
        return _fail(_describe(error, ctx))
    finally:
        ctx.close()


def _fail(message: str) -> int:
    sys.stderr.write(f"jobtrace: {message}\n")
    return 1


def _is_store_error(error: Exception) -> bool:
    """Errors of the store or its URL; anything else is a bug and keeps its traceback."""
    from jobtrace.exceptions import StoreError

    if isinstance(error, ImportError):  # a database driver that is not installed
        return not (error.name or "jobtrace").startswith("jobtrace")
    return isinstance(error, (SQLAlchemyError, StoreError))


def _describe(error: Exception, ctx: Context) -> str:
    """One line saying what is wrong with the store and where, without a traceback."""
    from jobtrace.exceptions import StoreError

    if isinstance(error, StoreError):
        return _first_line(error)
    if isinstance(error, ArgumentError):
        return f"bad database URL: {_first_line(error)}"
    if isinstance(error, ImportError):
        return f"cannot open {ctx.safe_url}: {error} (is its database driver installed?)"
    if isinstance(error, DBAPIError) and Job.__tablename__ in str(error.orig):
        # "no such table" or a missing column: a fresh database or an older schema.
        return f"{ctx.safe_url} has no jobtrace schema or an old one: run `jobtrace db upgrade`"
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"cannot read the lineage store at {ctx.safe_url}: {_first_line(error.orig)}"
    return f"lineage store at {ctx.safe_url}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tolerate_unencodable(stream: object) -> None:
    """Print ⚠ and ✗ as ``?`` rather than fail on a terminal that cannot encode them."""
    if isinstance(stream, io.TextIOWrapper) and (stream.encoding or "").lower() not in (
        "utf-8",
        "utf8",
    ):
        stream.reconfigure(errors="replace")
