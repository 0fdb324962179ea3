"""Campaign templates rendered in Jinja2's sandbox, strict about missing variables.

A campaign is a directory: ``subject.j2``, ``body.txt.j2`` and optionally ``body.html.j2``
(autoescaped, so recipient data cannot inject markup). Templates are compiled once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["RenderError", "Rendered", "TemplateError", "TemplateSet"]

SUBJECT = "subject.j2"
TEXT = "body.txt.j2"
HTML = "body.html.j2"


class TemplateError(Exception):
    """The template directory or a template in it is unusable (raised at load time)."""


class RenderError(Exception):
    """Rendering failed for one recipient (e.g. an undefined variable)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def _autoescape(name: str | None) -> bool:
    return bool(name and name.endswith((".html.j2", ".html")))


class TemplateSet:
    """The compiled templates of one campaign."""

    def __init__(self, directory: Path, *, extra: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        if not directory.is_dir():
            raise TemplateError(f"template directory {str(directory)!r} does not exist")
        for required in (SUBJECT, TEXT):
            if not (directory / required).is_file():
                raise TemplateError(
                    f"template directory {str(directory)!r} has no {required} "
                    f"(needs {SUBJECT}, {TEXT} and optionally {HTML})"
                )
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=_autoescape,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.subject = self._load(SUBJECT)
        self.text = self._load(TEXT)
        self.html = self._load(HTML) if (directory / HTML).is_file() else None
        self.extra: dict[str, jinja2.Template] = {}
        for name, source in (extra or {}).items():
            try:
                self.extra[name] = self.env.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{name} template: line {exc.lineno}: {exc.message}") from None

    def _load(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{self.directory / name}: line {exc.lineno}: {exc.message}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"{self.directory / name}: cannot read: {exc}") from None

    def render(self, variables: Mapping[str, Any]) -> Rendered:
        """Render subject, text and HTML; raise RenderError naming the failing template."""
        subject = self._render(self.subject, SUBJECT, variables).strip()
        text = self._render(self.text, TEXT, variables)
        html = self._render(self.html, HTML, variables) if self.html is not None else None
        return Rendered(subject, text, html)

    def render_extra(self, name: str, variables: Mapping[str, Any]) -> str:
        return self._render(self.extra[name], name, variables).strip()

    @staticmethod
    def _render(template: jinja2.Template, name: str, variables: Mapping[str, Any]) -> str:
        try:
            return template.render(variables)
        except jinja2.UndefinedError as exc:
            raise RenderError(f"{name}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"{name}: {exc}") from None
        except Exception as exc:  # a template can raise anything (e.g. ZeroDivisionError)
            raise RenderError(f"{name}: {type(exc).__name__}: {exc}") from None
