"""The `cds-service` command. Each subcommand lives in the module that owns its work.

Subcommands are imported when they are run (or listed by --help), not with this module: together they
pull in requests, jwt, gunicorn and the JSON schemas, about 0.2 s during which a Ctrl-C came before click
could catch it and printed a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import click

from cds_service import __version__

# name -> (module, attribute)
_COMMANDS = {
    "feedback-report": ("cds_service.feedback.command", "feedback_report"),
    "fire": ("cds_service.devtools.fire", "fire"),
    "load-fixtures": ("cds_service.loader", "load_fixtures"),
    "replay": ("cds_service.devtools.replay", "replay"),
    "serve": ("cds_service.serving", "serve"),
}
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class _LazyCommands(MutableMapping[str, click.Command]):
    """``Group.commands`` whose every name is known at once and whose command is imported when looked up."""

    def __init__(self, targets: dict[str, tuple[str, str]]) -> None:
        self._targets: dict[str, tuple[str, str] | None] = dict(targets)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            target = self._targets[name]  # KeyError for an unknown name, as a dict gives
            if target is None:
                raise KeyError(name)
            self._loaded[name] = getattr(importlib.import_module(target[0]), target[1])
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command
        self._targets.setdefault(name, None)

    def __delitem__(self, name: str) -> None:
        del self._targets[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


class _Commands(click.Group):
    """The subcommands, imported on use; Ctrl-C and a closed output pipe end them with one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(_COMMANDS)  # type: ignore[assignment]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _say("Error: interrupted (Ctrl-C)")
            ctx.exit(INTERRUPTED_STATUS)
        except BrokenPipeError:
            # `cds-service replay dir/ | head -1`: the reader has gone. Later writes (and the flush at exit)
            # would fail again, so stdout is pacified as click does; the message goes to stderr.
            sys.stdout = click.utils.PacifyFlushWrapper(sys.stdout)  # type: ignore[assignment]
            _say("Error: the output was closed before the command finished (broken pipe)")
            ctx.exit(1)


def _say(message: str) -> None:
    """One line on stderr, unless stderr has gone too (`2>&1 | head -1`)."""
    try:
        click.echo(message, err=True)
    except OSError:
        sys.stderr = click.utils.PacifyFlushWrapper(sys.stderr)  # type: ignore[assignment]


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cds-service")
def main() -> None:
    """B12–iron CDS Hooks 2.0 service: serve it, replay fixtures, load test data, report feedback."""
